//! lb-backend's WebSocket echo (`GET /ws`), for tests and demos of lb-sync's pass-through: the
//! RFC 6455 handshake, then every text and binary frame sent back as it came (fragments
//! included), pings answered with pongs and a close with a close.
//!
//! Each session has a thread of its own (blocking reads are the simplest correct echo, and a
//! demo backend need not scale), up to [`MAX_SESSIONS`] at once; the server's poller hands the
//! socket over once the 101 head is out, so no worker is held.
//!
//! ```
//! use lb_sync::demo_backend::websocket::accept_key;
//! // RFC 6455 1.3's example.
//! assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
//! ```

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha1::{Digest, Sha1};

use crate::server::{Request, Response, Switch, Version};

/// Sessions open at once; more are answered `503`.
pub const MAX_SESSIONS: usize = 4096;
/// Largest frame payload taken; a larger one is closed with 1009 (message too big).
pub const MAX_PAYLOAD: u64 = 16 * 1024 * 1024;
/// A session with nothing from the client for this long is closed.
const IDLE: Duration = Duration::from_secs(3600);
/// The GUID of RFC 6455 4.2.2, appended to the client's key before hashing.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Frame opcodes (RFC 6455 5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Close codes (RFC 6455 7.4.1).
const PROTOCOL_ERROR: u16 = 1002;
const TOO_BIG: u16 = 1009;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let digest = Sha1::new().chain_update(key.as_bytes()).chain_update(GUID.as_bytes()).finalize();
    base64(&digest)
}

/// Standard base64 with padding (RFC 4648 4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Whether a header's comma-separated tokens include `token` (case-insensitive).
fn has_token(request: &Request, header: &str, token: &str) -> bool {
    request
        .headers()
        .iter()
        .filter(|h| h.is(header))
        .any(|h| String::from_utf8_lossy(&h.value).split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// A key is base64 of 16 bytes (RFC 6455 4.1): 22 characters and `==`.
fn valid_key(key: &str) -> bool {
    key.len() == 24
        && key.ends_with("==")
        && key[..22].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// The answer to a request for the echo: `101` and a session, or why not.
pub fn answer(request: &Request, sessions: &Arc<AtomicUsize>) -> Response {
    let upgrade = has_token(request, "connection", "upgrade") && has_token(request, "upgrade", "websocket");
    if !upgrade || request.version() != Version::Http11 {
        return Response::text(
            426,
            "this is a WebSocket echo: send GET /ws over HTTP/1.1 with Connection: Upgrade, Upgrade: websocket, \
             Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key",
        )
        .with_header("Upgrade", "websocket");
    }
    if request.method() != "GET" {
        return Response::text(405, "a WebSocket handshake is a GET").with_header("Allow", "GET");
    }
    if request.is_tls() {
        // The echo runs on a socket of its own, which a TLS session cannot be handed to: refuse
        // before saying 101, rather than accept and drop the client.
        return Response::text(501, "the WebSocket echo is served on lb-backend's plain HTTP port only");
    }
    if request.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Response::text(426, "only WebSocket version 13 is spoken here")
            .with_header("Upgrade", "websocket")
            .with_header("Sec-WebSocket-Version", "13");
    }
    let Some(key) = request.header("sec-websocket-key").map(str::trim).filter(|k| valid_key(k)) else {
        return Response::text(400, "Sec-WebSocket-Key must be base64 of 16 bytes");
    };
    if sessions.fetch_add(1, Ordering::AcqRel) >= MAX_SESSIONS {
        sessions.fetch_sub(1, Ordering::AcqRel);
        return Response::text(503, format!("{MAX_SESSIONS} WebSocket sessions open already"))
            .with_header("Retry-After", "1");
    }
    let session = Session { count: Arc::clone(sessions) };
    let handoff = Box::new(move |socket: TcpStream, early: Vec<u8>| {
        let spawned = std::thread::Builder::new()
            .name("ws-echo".into())
            .stack_size(128 * 1024)
            .spawn(move || session.run(socket, early));
        if let Err(e) = spawned {
            // The closure (and with it the session count and the socket) is dropped: closed.
            log::warn!("cannot start a WebSocket session: {e}");
        }
    });
    Response::switching_protocols("websocket", Switch::Handoff(handoff))
        .with_header("Sec-WebSocket-Accept", accept_key(key))
}

/// One echo session; counted out when dropped.
struct Session {
    count: Arc<AtomicUsize>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One frame as read.
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// Why reading a frame stopped.
enum Stop {
    /// The connection ended or failed: nothing more can be said.
    Gone,
    /// The client broke the protocol: close with this code.
    Fail(u16),
}

impl From<io::Error> for Stop {
    fn from(_: io::Error) -> Stop {
        Stop::Gone
    }
}

impl Session {
    fn run(self, socket: TcpStream, early: Vec<u8>) {
        if socket.set_read_timeout(Some(IDLE)).is_err() || socket.set_nodelay(true).is_err() {
            return;
        }
        let mut output = &socket;
        let mut input = BufReader::new(io::Cursor::new(early).chain(&socket));
        loop {
            let frame = match read_frame(&mut input) {
                Ok(frame) => frame,
                Err(Stop::Gone) => return,
                Err(Stop::Fail(code)) => {
                    let _ = write_frame(&mut output, true, CLOSE, &code.to_be_bytes());
                    return close(&socket);
                }
            };
            let sent = match frame.opcode {
                CONTINUATION | TEXT | BINARY => write_frame(&mut output, frame.fin, frame.opcode, &frame.payload),
                PING => write_frame(&mut output, true, PONG, &frame.payload),
                PONG => Ok(()),
                CLOSE => {
                    // The close is echoed with its code (RFC 6455 5.5.1), and the server closes
                    // the TCP connection first (7.1.1).
                    let code = frame.payload.get(..2).unwrap_or(&[]);
                    let _ = write_frame(&mut output, true, CLOSE, code);
                    return close(&socket);
                }
                _ => {
                    let _ = write_frame(&mut output, true, CLOSE, &PROTOCOL_ERROR.to_be_bytes());
                    return close(&socket);
                }
            };
            if sent.is_err() {
                return;
            }
        }
    }
}

/// Closes after a close frame: our side first, then whatever the client still sends is read
/// away briefly so the close frame is not lost to a reset.
fn close(socket: &TcpStream) {
    let _ = socket.shutdown(Shutdown::Write);
    let _ = socket.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = io::copy(&mut socket.take(1 << 20), &mut io::sink());
}

/// Reads one frame, unmasking it; checks what a server must (RFC 6455 5.1-5.5).
fn read_frame(input: &mut impl Read) -> Result<Frame, Stop> {
    let mut head = [0u8; 2];
    input.read_exact(&mut head)?;
    let fin = head[0] & 0x80 != 0;
    let opcode = head[0] & 0x0F;
    if head[0] & 0x70 != 0 {
        // No extension was negotiated, so no RSV bit may be set.
        return Err(Stop::Fail(PROTOCOL_ERROR));
    }
    if head[1] & 0x80 == 0 {
        // A client must mask every frame.
        return Err(Stop::Fail(PROTOCOL_ERROR));
    }
    let length = match head[1] & 0x7F {
        126 => {
            let mut n = [0u8; 2];
            input.read_exact(&mut n)?;
            u64::from(u16::from_be_bytes(n))
        }
        127 => {
            let mut n = [0u8; 8];
            input.read_exact(&mut n)?;
            u64::from_be_bytes(n)
        }
        n => u64::from(n),
    };
    if opcode >= CLOSE && (!fin || length > 125) {
        return Err(Stop::Fail(PROTOCOL_ERROR));
    }
    if length > MAX_PAYLOAD {
        return Err(Stop::Fail(TOO_BIG));
    }
    let mut mask = [0u8; 4];
    input.read_exact(&mut mask)?;
    let mut payload = vec![0u8; length as usize];
    input.read_exact(&mut payload)?;
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
    Ok(Frame { fin, opcode, payload })
}

/// Writes one unmasked frame (a server never masks), head and payload in one write.
fn write_frame(output: &mut impl Write, fin: bool, opcode: u8, payload: &[u8]) -> io::Result<()> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(if fin { 0x80 } else { 0 } | opcode);
    match payload.len() {
        n @ 0..=125 => frame.push(n as u8),
        n @ 126..=0xFFFF => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    output.write_all(&frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads_like_rfc_4648() {
        let cases =
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64(&[0xFF, 0xEF, 0xBE]), "/+++");
    }

    #[test]
    fn frames_round_trip_and_client_frames_must_be_masked() {
        for size in [0usize, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let mut wire = Vec::new();
            write_frame(&mut wire, true, BINARY, &payload).unwrap();
            // What a client would send: the same frame, masked.
            let mask = [1u8, 2, 3, 4];
            let header_len = wire.len() - size;
            let mut masked = wire[..header_len].to_vec();
            masked[1] |= 0x80;
            masked.extend_from_slice(&mask);
            masked.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            let frame = read_frame(&mut &masked[..]).ok().expect("a frame");
            assert_eq!((frame.fin, frame.opcode, frame.payload), (true, BINARY, payload.clone()));
            assert!(matches!(read_frame(&mut &wire[..]), Err(Stop::Fail(PROTOCOL_ERROR))), "unmasked");
        }
    }
}
