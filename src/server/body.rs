//! Decoding a request body as its bytes arrive: Content-Length or chunked (strict chunk-size
//! parsing, RFC 9112 7.1), bounded by the body limit. A push decoder: the poller feeds it
//! whatever the socket gave, never blocking, and it says how much it used, so the bytes after the
//! body (a pipelined request) stay with the connection.

use super::error::RequestError;
use super::head::BodyFraming;

/// A chunk-size line (size and extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;
/// All trailer fields together may not exceed this.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Length { remaining: u64 },
    ChunkSize,
    ChunkData { remaining: u64 },
    ChunkEnd,
    Trailers { seen: usize },
    Done,
}

/// The decoding state of one request body.
///
/// ```
/// use lb_sync::server::{BodyDecoder, BodyFraming};
/// let mut decoder = BodyDecoder::new(BodyFraming::Chunked, 1 << 20);
/// let mut body = Vec::new();
/// let used = decoder.feed(b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1", &mut |data| { body.extend_from_slice(data); Ok(()) }).unwrap();
/// assert_eq!((body.as_slice(), used, decoder.is_complete()), (&b"abc"[..], 13, true));
/// ```
#[derive(Debug)]
pub struct BodyDecoder {
    phase: Phase,
    /// A chunk-size line, chunk end or trailer line split across feeds.
    line: Vec<u8>,
    received: u64,
    max_body: u64,
}

/// Where decoded bytes go; an error from it (a full disk) ends decoding.
pub type BodySink<'a> = dyn FnMut(&[u8]) -> Result<(), RequestError> + 'a;

impl BodyDecoder {
    /// A decoder for a body delimited by `framing`, refusing more than `max_body` decoded bytes.
    pub fn new(framing: BodyFraming, max_body: u64) -> BodyDecoder {
        let phase = match framing {
            BodyFraming::None | BodyFraming::Length(0) => Phase::Done,
            BodyFraming::Length(n) => Phase::Length { remaining: n },
            BodyFraming::Chunked => Phase::ChunkSize,
        };
        BodyDecoder { phase, line: Vec::new(), received: 0, max_body }
    }

    /// Whether the whole body has been decoded.
    pub fn is_complete(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Decoded body bytes so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Decodes from `input`, passing body bytes to `sink`; returns how many input bytes belong to
    /// the body (all of them, unless the body ended inside `input`).
    pub fn feed(&mut self, input: &[u8], sink: &mut BodySink<'_>) -> Result<usize, RequestError> {
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            match self.phase {
                Phase::Done => break,
                Phase::Length { remaining } | Phase::ChunkData { remaining } => {
                    let n = rest.len().min(remaining.min(usize::MAX as u64) as usize);
                    sink(&rest[..n])?;
                    used += n;
                    self.received += n as u64;
                    let left = remaining - n as u64;
                    self.phase = match self.phase {
                        Phase::Length { .. } if left == 0 => Phase::Done,
                        Phase::Length { .. } => Phase::Length { remaining: left },
                        _ if left == 0 => Phase::ChunkEnd,
                        _ => Phase::ChunkData { remaining: left },
                    };
                }
                Phase::ChunkSize | Phase::ChunkEnd | Phase::Trailers { .. } => {
                    // Line-shaped parts: gather up to and including LF, then judge the line.
                    let (taken, complete) = match rest.iter().position(|&b| b == b'\n') {
                        Some(i) => (i + 1, true),
                        None => (rest.len(), false),
                    };
                    self.line.extend_from_slice(&rest[..taken]);
                    used += taken;
                    if complete {
                        let line = std::mem::take(&mut self.line);
                        self.end_of_line(&line)?;
                    } else {
                        self.check_partial_line()?;
                    }
                }
            }
        }
        Ok(used)
    }

    /// Refuses a partial line that is already too long to be valid.
    fn check_partial_line(&self) -> Result<(), RequestError> {
        match self.phase {
            Phase::ChunkSize if self.line.len() > MAX_CHUNK_LINE => {
                Err(RequestError::BadRequest("chunk size line too long"))
            }
            Phase::ChunkEnd if self.line.len() > 2 || (self.line.len() == 2 && self.line[..] != *b"\r\n") => {
                Err(RequestError::BadRequest("chunk data not followed by CRLF"))
            }
            Phase::Trailers { seen } if seen + self.line.len() > MAX_TRAILER_BYTES => Err(RequestError::HeadTooLarge),
            _ => Ok(()),
        }
    }

    /// Judges one complete line (ending in LF) of a chunk-size, chunk end or trailer part.
    fn end_of_line(&mut self, line: &[u8]) -> Result<(), RequestError> {
        // Every line of the chunked coding ends in CRLF; a bare LF is where smuggling starts.
        let Some(content) = line.strip_suffix(b"\r\n") else {
            return Err(RequestError::BadRequest("line of a chunked body not ended by CRLF"));
        };
        match self.phase {
            Phase::ChunkSize => self.chunk_size(line),
            Phase::ChunkEnd if content.is_empty() => {
                self.phase = Phase::ChunkSize;
                Ok(())
            }
            Phase::ChunkEnd => Err(RequestError::BadRequest("chunk data not followed by CRLF")),
            Phase::Trailers { seen } => {
                // A trailer line is a header line: a token, a colon, a value without control bytes.
                if !content.is_empty() && !is_field_line(content) {
                    return Err(RequestError::BadRequest("malformed trailer"));
                }
                if seen + content.len() > MAX_TRAILER_BYTES {
                    return Err(RequestError::HeadTooLarge);
                }
                self.phase = if content.is_empty() { Phase::Done } else { Phase::Trailers { seen: seen + line.len() } };
                Ok(())
            }
            Phase::Length { .. } | Phase::ChunkData { .. } | Phase::Done => Ok(()),
        }
    }

    fn chunk_size(&mut self, line: &[u8]) -> Result<(), RequestError> {
        // httparse accepts a size line with no digits at all; RFC 9112 requires 1*HEXDIG.
        if !line.first().is_some_and(u8::is_ascii_hexdigit) {
            return Err(RequestError::BadRequest("invalid chunk size"));
        }
        // httparse allows any byte in an extension: a peer that ends lines differently would
        // see two lines where we see one.
        if line[..line.len() - 2].iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(RequestError::BadRequest("control byte in a chunk size line"));
        }
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if !is_chunk_ext(&line[digits..line.len() - 2]) {
            return Err(RequestError::BadRequest("invalid chunk extension"));
        }
        match httparse::parse_chunk_size(line) {
            Ok(httparse::Status::Complete((used, size))) if used == line.len() => {
                if self.received.saturating_add(size) > self.max_body {
                    return Err(RequestError::BodyTooLarge);
                }
                self.phase = if size == 0 { Phase::Trailers { seen: 0 } } else { Phase::ChunkData { remaining: size } };
                Ok(())
            }
            _ => Err(RequestError::BadRequest("invalid chunk size")),
        }
    }
}

/// RFC 9110 5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9112 7.1.1: `*( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )`, where a name is a token
/// and a value a token or a quoted string. httparse skips extensions unchecked; we do not
/// forward what we have not checked.
fn is_chunk_ext(mut ext: &[u8]) -> bool {
    let skip_ws = |s: &mut &[u8]| {
        while let [b' ' | b'\t', rest @ ..] = *s {
            *s = rest;
        }
    };
    let token = |s: &mut &[u8]| {
        let n = s.iter().take_while(|&&b| is_tchar(b)).count();
        *s = &s[n..];
        n > 0
    };
    loop {
        skip_ws(&mut ext);
        match ext {
            [] => return true,
            [b';', rest @ ..] => ext = rest,
            _ => return false,
        }
        skip_ws(&mut ext);
        if !token(&mut ext) {
            return false;
        }
        let mut after = ext;
        skip_ws(&mut after);
        if let [b'=', rest @ ..] = after {
            ext = rest;
            skip_ws(&mut ext);
            if let [b'"', rest @ ..] = ext {
                // quoted-string: qdtext or quoted-pair, up to the closing quote.
                let mut rest = rest;
                loop {
                    match rest {
                        [b'"', tail @ ..] => {
                            ext = tail;
                            break;
                        }
                        [b'\\', b, tail @ ..] if *b == b'\t' || (0x20..0x7f).contains(b) || *b >= 0x80 => rest = tail,
                        [b, tail @ ..] if *b == b'\t' || (*b >= 0x20 && *b != 0x7f && *b != b'\\') => rest = tail,
                        _ => return false,
                    }
                }
            } else if !token(&mut ext) {
                return false;
            }
        }
    }
}

/// A header (or trailer) line: `field-name ":" field-value`, a token before the colon and no
/// control byte but HTAB after it.
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else { return false };
    colon > 0
        && line[..colon].iter().all(|&b| is_tchar(b))
        && line[colon + 1..].iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_bytewise(framing: BodyFraming, input: &[u8]) -> Result<(Vec<u8>, usize), RequestError> {
        let mut decoder = BodyDecoder::new(framing, 1 << 20);
        let mut body = Vec::new();
        let mut used = 0;
        for i in 0..input.len() {
            if decoder.is_complete() {
                break;
            }
            used += decoder.feed(&input[i..i + 1], &mut |d| {
                body.extend_from_slice(d);
                Ok(())
            })?;
        }
        Ok((body, used))
    }

    #[test]
    fn chunked_split_at_every_byte_decodes_the_same() {
        let wire = b"3;ext=1\r\nabc\r\n1 ; a = \"q\\\"s\" ;b\r\nd\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (body, used) = decode_bytewise(BodyFraming::Chunked, wire).unwrap();
        assert_eq!((body.as_slice(), used), (&b"abcd"[..], wire.len() - 4));
    }

    #[test]
    fn framing_errors_are_refused() {
        for (wire, why) in [
            (&b"x\r\n"[..], "invalid chunk size"),
            (b"3\nabc\r\n0\r\n\r\n", "line of a chunked body not ended by CRLF"),
            (b"3\r\nabcX\r\n", "chunk data not followed by CRLF"),
            (b"3;a\x01b\r\nabc\r\n", "control byte in a chunk size line"),
            (b"0\r\n: bad\r\n\r\n", "malformed trailer"),
            (b"0\r\nNoColon\r\n\r\n", "malformed trailer"),
            (b"0\r\nabc\r\n\r\n", "malformed trailer"),
            (b"3;\r\nabc\r\n", "invalid chunk extension"),
            (b"3;=1\r\nabc\r\n", "invalid chunk extension"),
            (b"3;a=\r\nabc\r\n", "invalid chunk extension"),
            (b"3;a=\"x\r\nabc\r\n", "invalid chunk extension"),
            (b"3 x\r\nabc\r\n", "invalid chunk extension"),
        ] {
            assert_eq!(decode_bytewise(BodyFraming::Chunked, wire), Err(RequestError::BadRequest(why)), "{wire:?}");
        }
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked, 10);
        assert_eq!(decoder.feed(b"b\r\n", &mut |_| Ok(())), Err(RequestError::BodyTooLarge));
    }

    #[test]
    fn length_stops_at_its_end() {
        let (body, used) = decode_bytewise(BodyFraming::Length(3), b"abcdef").unwrap();
        assert_eq!((body.as_slice(), used), (&b"abc"[..], 3));
    }
}
