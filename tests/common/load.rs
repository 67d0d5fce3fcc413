//! A closed-loop load of keep-alive GETs from many client threads, with every outcome
//! classified, for the lifecycle and soak tests.
//!
//! - `ok`: a complete answer with an expected status;
//! - `failed`: any other answer, or a connection that broke after the answer began (a
//!   truncated body): a request lost;
//! - `unanswered`: the connection closed or was reset before any byte of an answer. On a
//!   connection that had served requests before, that is the keep-alive race every HTTP client
//!   meets (RFC 9112 9.3.1: the server closed an idle connection as the request went out); the
//!   client then resends an idempotent request once on a new connection (`resent`), as curl and
//!   browsers do. On a fresh connection it counts as lost;
//! - `refused`: no connection at all (the listener is closed): never sent.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Counts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub unanswered: AtomicU64,
    pub resent: AtomicU64,
    pub refused: AtomicU64,
    /// What the failures were, the first few.
    pub failures: Mutex<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub ok: u64,
    pub failed: u64,
    pub unanswered: u64,
    pub resent: u64,
    pub refused: u64,
    pub failures: Vec<String>,
}

impl Report {
    /// Requests sent that got no complete, expected answer.
    pub fn lost(&self) -> u64 {
        self.failed + self.unanswered
    }
}

pub struct Load {
    pub counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// How one request ended.
enum Outcome {
    Answered {
        status: u16,
        close: bool,
    },
    /// Closed or reset before any byte of an answer.
    Unanswered,
    /// Broke after the answer began.
    Broken(String),
}

fn exchange(reader: &mut BufReader<TcpStream>, request: &[u8]) -> Outcome {
    if reader.get_mut().write_all(request).is_err() {
        return Outcome::Unanswered;
    }
    match reader.fill_buf() {
        Ok([]) | Err(_) => return Outcome::Unanswered,
        Ok(_) => {}
    }
    match super::read_response(reader, false) {
        Ok(resp) => {
            let close = resp.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
            Outcome::Answered { status: resp.status, close }
        }
        Err(e) => Outcome::Broken(e.to_string()),
    }
}

impl Load {
    /// `clients` threads, each sending `GET path` in a loop on a keep-alive connection until
    /// stopped; `expected` are the statuses that count as served.
    pub fn start(addr: SocketAddr, clients: usize, path: &str, expected: &'static [u16]) -> Load {
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let request = format!("GET {path} HTTP/1.1\r\nHost: load\r\n\r\n").into_bytes();
        let threads = (0..clients)
            .map(|_| {
                let (counts, stop, request) = (Arc::clone(&counts), Arc::clone(&stop), request.clone());
                std::thread::spawn(move || client(addr, &request, expected, &counts, &stop))
            })
            .collect();
        Load { counts, stop, threads }
    }

    pub fn ok(&self) -> u64 {
        self.counts.ok.load(Ordering::Relaxed)
    }

    pub fn report(&self) -> Report {
        let c = &self.counts;
        Report {
            ok: c.ok.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            unanswered: c.unanswered.load(Ordering::Relaxed),
            resent: c.resent.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            failures: c.failures.lock().unwrap().clone(),
        }
    }

    /// Stops the clients (each finishes its request) and reports.
    pub fn stop(mut self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
        self.report()
    }

    /// Waits until the clients have stopped by themselves (every connection refused).
    pub fn join(mut self) -> Report {
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
        self.report()
    }
}

fn note(counts: &Counts, what: String) {
    let mut failures = counts.failures.lock().unwrap();
    if failures.len() < 10 {
        failures.push(what);
    }
}

fn connect(addr: SocketAddr) -> Option<BufReader<TcpStream>> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    stream.set_nodelay(true).ok()?;
    Some(BufReader::new(stream))
}

fn client(addr: SocketAddr, request: &[u8], expected: &[u16], counts: &Counts, stop: &AtomicBool) {
    let mut conn: Option<(BufReader<TcpStream>, bool)> = None;
    while !stop.load(Ordering::Relaxed) {
        let (mut reader, reused) = match conn.take() {
            Some(c) => c,
            None => match connect(addr) {
                Some(reader) => (reader, false),
                None => {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                    // The listener is gone (a stop): this client is done.
                    return;
                }
            },
        };
        let mut outcome = exchange(&mut reader, request);
        if matches!(outcome, Outcome::Unanswered) && reused {
            // The keep-alive race: resend once on a new connection.
            counts.resent.fetch_add(1, Ordering::Relaxed);
            match connect(addr) {
                Some(fresh) => {
                    reader = fresh;
                    outcome = exchange(&mut reader, request);
                }
                None => {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        match outcome {
            Outcome::Answered { status, close } if expected.contains(&status) => {
                counts.ok.fetch_add(1, Ordering::Relaxed);
                if !close {
                    conn = Some((reader, true));
                }
            }
            Outcome::Answered { status, .. } => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                note(counts, format!("status {status}"));
            }
            Outcome::Unanswered => {
                counts.unanswered.fetch_add(1, Ordering::Relaxed);
                note(counts, "closed before an answer on a fresh connection".into());
            }
            Outcome::Broken(why) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                note(counts, format!("broken answer: {why}"));
            }
        }
    }
}
