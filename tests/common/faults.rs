//! Misbehaving backends on loopback, each a real server on an ephemeral port run by a thread of
//! the test: one that accepts and never answers, one that closes in the middle of a body, one
//! that answers garbage, one that resets, one that answers a byte at a time. Each counts the
//! requests it saw; dropping it stops its thread and closes its sockets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a faulty backend does with each request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Accepts, reads, never answers (a blackhole); the connection stays open.
    Silent,
    /// Answers `200` with `Content-Length: 1000`, sends 100 bytes, closes.
    CloseMidBody,
    /// Answers `200` with `Content-Length: 1000`, sends 100 bytes, then holds the connection
    /// open without sending more until the test ends.
    StallMidBody,
    /// Answers bytes that are not HTTP, closes.
    Garbage,
    /// Reads the request, then resets the connection before any answer.
    Reset,
    /// Answers a complete `200` of `TRICKLE_BODY`, one byte every `delay`.
    Trickle { delay_ms: u64 },
    /// Answers a normal `200 ok` at once.
    Fine,
}

pub const TRICKLE_BODY: &[u8] = b"slow but complete";

pub struct FaultyBackend {
    pub addr: SocketAddr,
    /// Requests (heads) seen.
    pub hits: Arc<AtomicUsize>,
    /// The request line of each request seen.
    pub lines: Arc<Mutex<Vec<String>>>,
    fault: Arc<Mutex<Fault>>,
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultyBackend {
    pub fn start(fault: Fault) -> FaultyBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let fault = Arc::new(Mutex::new(fault));
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (h, f, s, k) = (Arc::clone(&hits), Arc::clone(&fault), Arc::clone(&stop), Arc::clone(&held));
        let l = Arc::clone(&lines);
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (h, f, k, s) = (Arc::clone(&h), Arc::clone(&f), Arc::clone(&k), Arc::clone(&s));
                        let l = Arc::clone(&l);
                        std::thread::spawn(move || serve(stream, &h, &l, &f, &k, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        FaultyBackend { addr, hits, lines, fault, stop, held, thread: Some(thread) }
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for FaultyBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for stream in self.held.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request head (and a Content-Length body); its request line, or `None` at EOF.
fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let mut have = buf.len() - end - 4;
            while have < length {
                match stream.read(&mut byte) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => have += n,
                }
            }
            return Some(String::from_utf8_lossy(&buf[..end]).lines().next().unwrap_or("").to_string());
        }
        match stream.read(&mut byte) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&byte[..n]),
        }
    }
}

fn serve(
    mut stream: TcpStream,
    hits: &AtomicUsize,
    lines: &Mutex<Vec<String>>,
    fault: &Mutex<Fault>,
    held: &Mutex<Vec<TcpStream>>,
    stop: &AtomicBool,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_nodelay(true);
    loop {
        let Some(line) = read_request(&mut stream) else { return };
        lines.lock().unwrap().push(line);
        hits.fetch_add(1, Ordering::SeqCst);
        let fault = *fault.lock().unwrap();
        match fault {
            Fault::Silent | Fault::StallMidBody => {
                if fault == Fault::StallMidBody {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
                    let _ = stream.write_all(&[b'x'; 100]);
                }
                if let Ok(clone) = stream.try_clone() {
                    held.lock().unwrap().push(clone);
                }
                // Hold it open, reading nothing more, until the test ends.
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
            Fault::CloseMidBody => {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
                let _ = stream.write_all(&[b'x'; 100]);
                let _ = stream.flush();
                std::thread::sleep(Duration::from_millis(20));
                return;
            }
            Fault::Garbage => {
                let _ = stream.write_all(b"\x00\x01garbage that is not HTTP at all\r\n\xff\xfe\r\n\r\n");
                return;
            }
            Fault::Reset => {
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                return;
            }
            Fault::Trickle { delay_ms } => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", TRICKLE_BODY.len());
                for byte in head.as_bytes().iter().chain(TRICKLE_BODY) {
                    if stream.write_all(&[*byte]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(delay_ms));
                }
            }
            Fault::Fine => {
                if stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
                    return;
                }
            }
        }
    }
}

/// A backend for one connection that answers `413` (`too large`, `Connection: close`) as soon as
/// it has read the request head, and closes without reading the body: an early answer. Its
/// thread's result is that of writing the answer.
pub fn answers_413_after_the_head() -> (SocketAddr, std::thread::JoinHandle<std::io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        // A byte at a time, so that not one byte of the body is read.
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        stream.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
    });
    (addr, thread)
}
