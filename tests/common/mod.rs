//! Helpers shared by the integration tests: a raw HTTP/1.1 client that reads exactly what the
//! server sent, child processes that are always stopped, free ports, temp files, signals by PID,
//! and readings from /proc.
#![allow(dead_code)]

pub mod api;
pub mod etcd;
pub mod faults;
pub mod inproc;
pub mod lb;
pub mod load;
pub mod tls;
pub mod tools;
pub mod ws;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A response as read off the wire.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// The id of the demo backend that answered (its `server_info.id`), `?` when the answer has none.
pub fn served_by(resp: &Resp) -> String {
    resp.json()["server_info"]["id"].as_str().unwrap_or("?").to_string()
}

/// A client's socket: plain TCP, or a rustls session over it (see [`tls`]).
pub enum Socket {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Socket {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Socket::Plain(tcp) => tcp,
            Socket::Tls(tls) => tls.get_ref(),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().local_addr()
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp().set_read_timeout(timeout)
    }

    /// Shuts the TCP socket down (over TLS too: no close_notify, a bare end of stream).
    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        self.tcp().shutdown(how)
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Plain(tcp) => tcp.read(buf),
            Socket::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Plain(tcp) => tcp.write(buf),
            Socket::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Socket::Plain(tcp) => tcp.flush(),
            Socket::Tls(tls) => tls.flush(),
        }
    }
}

/// A client connection with a read timeout, so a server bug fails the test instead of hanging it.
pub struct Conn {
    pub reader: BufReader<Socket>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        Conn::over(connect(addr), None)
    }

    /// A TLS connection, its handshake done, verified against `client`'s roots for `localhost`.
    pub fn open_tls(addr: SocketAddr, client: &std::sync::Arc<rustls::ClientConfig>) -> Conn {
        Conn::over(connect(addr), Some(client))
    }

    /// A connection over `stream` (TLS when `client` is given).
    pub fn over(stream: TcpStream, client: Option<&std::sync::Arc<rustls::ClientConfig>>) -> Conn {
        Conn::try_over(stream, client).expect("TLS handshake")
    }

    /// [`over`](Self::over), with a failed handshake as an error.
    pub fn try_over(stream: TcpStream, client: Option<&std::sync::Arc<rustls::ClientConfig>>) -> io::Result<Conn> {
        let socket = match client {
            None => Socket::Plain(stream),
            Some(client) => Socket::Tls(Box::new(tls::handshake(stream, client, "localhost")?)),
        };
        Ok(Conn { reader: BufReader::new(socket) })
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.reader.get_mut().write_all(raw).expect("write");
    }

    pub fn get(&mut self, path: &str) -> Resp {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        self.response()
    }

    pub fn response(&mut self) -> Resp {
        read_response(&mut self.reader, false).expect("a response")
    }

    pub fn head_response(&mut self) -> Resp {
        read_response(&mut self.reader, true).expect("a response")
    }

    /// Everything until the server closes (a reset counts as a close).
    pub fn rest(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = self.reader.read_to_end(&mut out);
        out
    }

    /// True when the server has closed the connection (EOF or reset) with nothing more sent.
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.reader.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
        }
    }
}

/// A TCP connection with a read timeout and Nagle off.
fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads one response; 1xx interim responses are returned like any other.
pub fn read_response(reader: &mut impl BufRead, head_request: bool) -> io::Result<Resp> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before a status line"));
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').expect("header line");
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let mut resp = Resp { status, headers, body: Vec::new() };
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(resp);
    }
    if resp.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        resp.body = read_chunked(reader)?;
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().expect("numeric length");
        resp.body = vec![0; len];
        reader.read_exact(&mut resp.body)?;
    } else {
        reader.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

/// Decodes a chunked body; an end of stream before the final chunk is an error.
pub fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no final chunk"));
        }
        let size_text = line.trim_end().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk line {line:?}")))?;
        if size == 0 {
            loop {
                line.clear();
                reader.read_line(&mut line)?;
                if line == "\r\n" || line.is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
    }
}

/// Encodes `data` as chunks of the given sizes (cycled), with an extension on every chunk.
pub fn chunked(data: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].min(rest.len());
        out.extend_from_slice(format!("{n:X};ext{i}=\"v\"\r\n").as_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
        i += 1;
    }
    out.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
    out
}

/// A child process that is killed and reaped when dropped.
pub struct ChildProcess {
    pub child: Child,
    pub ready_line: String,
}

impl ChildProcess {
    /// Starts `command` and waits for its first stdout line (its ready line).
    pub fn start(mut command: Command) -> ChildProcess {
        command.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = command.spawn().expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("ready line");
        assert!(!line.is_empty(), "child exited before its ready line");
        ChildProcess { child, ready_line: line.trim().to_string() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The HTTPS address from a ready line saying `https on ADDR` (`(https on ADDR)` for
    /// lb-backend, `; https on ADDR` for lb-sync).
    pub fn tls_addr(&self) -> SocketAddr {
        tls_addr_in(&self.ready_line)
    }

    /// The address from a ready line ending in `listening on ADDR`.
    pub fn addr(&self) -> SocketAddr {
        self.ready_line.rsplit(' ').next().and_then(|a| a.parse().ok()).expect("address in ready line")
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address after `https on ` in a ready line.
pub fn tls_addr_in(line: &str) -> SocketAddr {
    line.split("https on ")
        .nth(1)
        .and_then(|rest| rest.split([' ', ')', ';']).next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no https address in the ready line {line:?}"))
}

/// An `lb-backend` child on an ephemeral loopback port.
pub fn backend(extra: &[&str]) -> ChildProcess {
    backend_on(0, extra)
}

/// An `lb-backend` child on `port` (one chosen beforehand, to restart it there).
pub fn backend_on(port: u16, extra: &[&str]) -> ChildProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lb-backend"));
    command.args(["--port", &port.to_string()]).args(extra);
    ChildProcess::start(command)
}

/// `n` [`backend`]s with the same `extra` arguments, and their addresses in the same order.
pub fn backends(n: usize, extra: &[&str]) -> (Vec<ChildProcess>, Vec<SocketAddr>) {
    let children: Vec<ChildProcess> = (0..n).map(|_| backend(extra)).collect();
    let addrs = children.iter().map(|c| c.addr()).collect();
    (children, addrs)
}

/// A loopback port nothing listens on (free a moment ago): connections to it are refused until
/// something binds it.
pub fn unused_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `n` distinct loopback ports free a moment ago (all held while choosing, so they differ).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// Sends `signal` (`TERM`, `KILL`, `HUP`...) to `pid` with kill(1): by PID, never by name.
pub fn kill(pid: u32, signal: &str) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// A new, empty directory `lb-sync-<tag>-<pid>-<n>` under the system temp directory: `n` counts
/// the calls in this test binary, so no two of its tests share one (a stale one is emptied).
pub fn unique_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("lb-sync-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `text` to the file `name` in this test binary's directory `lb-sync-<binary>-<pid>`
/// under the system temp directory (one directory for all its tests: a name is a test's own);
/// returns its path.
pub fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lb-sync-{}-{}", env!("CARGO_CRATE_NAME"), std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A field of /proc/PID/status in its unit (kB for memory), e.g. `VmRSS`, `VmHWM`, `Threads`.
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Polls `check` every 10 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    check()
}

/// Checks Prometheus text with `promtool check metrics`: it must pass and say nothing. Without
/// promtool the check is skipped (see [`tools::require`]), except under CI.
pub fn promtool_check(text: &str) {
    if !tools::require(&[&tools::PROMTOOL]) {
        return;
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{text}");
}

/// The pollers the environment asks every server under test to run (`LB_TEST_POLLERS`), if it
/// does: `LB_TEST_POLLERS=1 cargo test ...` runs a file with today's one-poller shape.
pub fn test_pollers() -> Option<usize> {
    let value = std::env::var("LB_TEST_POLLERS").ok()?;
    Some(value.parse().unwrap_or_else(|_| panic!("LB_TEST_POLLERS must be a number, got {value:?}")))
}

/// The pollers of an in-process server under test: `LB_TEST_POLLERS`, or the default.
pub fn pollers_under_test() -> usize {
    test_pollers().unwrap_or_else(lb_sync::server::default_pollers)
}
