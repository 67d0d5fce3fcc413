//! Each backend's idle connections (`src/upstream/pool.rs`) seen from the backend's side: a
//! server of the test's that numbers its connections, answers each request with its
//! connection's number, and knows which connections the balancer closed.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use common::{wait_until, Conn};
use lb_sync::balancer::LoadBalancer;
use lb_sync::config::{BackendConfig, Config, UpstreamReuse};

/// What the backend knows of its connections.
#[derive(Default)]
struct Seen {
    /// Connections accepted (their numbers are 1, 2, ...).
    opened: usize,
    /// Numbers of the connections the balancer closed.
    closed_by_peer: BTreeSet<usize>,
    /// Requests waiting for `hold` to let them go.
    waiting: usize,
}

/// A backend that numbers its connections and answers each request with the number.
struct CountingBackend {
    addr: SocketAddr,
    seen: Arc<(Mutex<Seen>, Condvar)>,
    /// Answers wait until this many requests wait together (0: answer at once).
    hold: Arc<AtomicUsize>,
    /// The server side of each connection, to close one from here.
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl CountingBackend {
    fn start() -> CountingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new((Mutex::new(Seen::default()), Condvar::new()));
        let hold = Arc::new(AtomicUsize::new(0));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, h, k, st) = (Arc::clone(&seen), Arc::clone(&hold), Arc::clone(&sockets), Arc::clone(&stop));
        thread::spawn(move || {
            for stream in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let number = {
                    let mut seen = s.0.lock().unwrap();
                    seen.opened += 1;
                    seen.opened
                };
                k.lock().unwrap().push(stream.try_clone().unwrap());
                let (s, h) = (Arc::clone(&s), Arc::clone(&h));
                thread::spawn(move || serve(stream, number, &s, &h));
            }
        });
        CountingBackend { addr, seen, hold, sockets, stop }
    }

    fn opened(&self) -> usize {
        self.seen.0.lock().unwrap().opened
    }

    fn closed_by_peer(&self) -> BTreeSet<usize> {
        self.seen.0.lock().unwrap().closed_by_peer.clone()
    }

    /// Closes the server side of connection `number` (a backend's keep-alive timeout).
    fn close(&self, number: usize) {
        let _ = self.sockets.lock().unwrap()[number - 1].shutdown(Shutdown::Both);
    }
}

impl Drop for CountingBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for socket in self.sockets.lock().unwrap().iter() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(stream: TcpStream, number: usize, seen: &(Mutex<Seen>, Condvar), hold: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        // A GET head, up to its empty line; EOF or an error: the balancer closed it.
        let mut line = String::new();
        let mut got_head = false;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line == "\r\n" => {
                    got_head = true;
                    break;
                }
                Ok(_) => {}
            }
        }
        if !got_head {
            seen.0.lock().unwrap().closed_by_peer.insert(number);
            return;
        }
        let target = hold.load(Ordering::SeqCst);
        if target > 0 {
            let mut state = seen.0.lock().unwrap();
            state.waiting += 1;
            seen.1.notify_all();
            let (state, _) = seen.1.wait_timeout_while(state, Duration::from_secs(10), |s| s.waiting < target).unwrap();
            drop(state);
        }
        let body = number.to_string();
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn balancer(backend: SocketAddr, settings: impl FnOnce(&mut Config)) -> LoadBalancer {
    let backends = vec![BackendConfig::new("127.0.0.1", backend.port(), 1)];
    // Every request may take an idle connection (nginx's way), so that which one is taken shows
    // the pool's order alone; `upstream_reuse` safe is tests/hostile_backends.rs's.
    let mut config = {
        let mut adjusted = common::inproc::config(backends);
        adjusted.listener.threads = 16;
        adjusted.health.interval = None;
        adjusted.pool.upstream_reuse = UpstreamReuse::Always;
        adjusted
    };
    settings(&mut config);
    LoadBalancer::start(config).unwrap()
}

/// The connection number a GET through the balancer went out on.
fn connection_of(conn: &mut Conn) -> usize {
    let resp = conn.get("/");
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.text().parse().unwrap()
}

/// `n` GETs at once, each on a client connection of its own, held at the backend until all
/// `n` are there: the balancer needs `n` backend connections for them.
fn burst(lb: &LoadBalancer, backend: &CountingBackend, n: usize) {
    backend.hold.store(n, Ordering::SeqCst);
    let addr = lb.local_addr();
    let clients: Vec<_> = (0..n).map(|_| thread::spawn(move || connection_of(&mut Conn::open(addr)))).collect();
    let used: BTreeSet<usize> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(used.len(), n, "a burst of {n} held requests uses {n} connections");
    backend.hold.store(0, Ordering::SeqCst);
    backend.seen.0.lock().unwrap().waiting = 0;
}

fn backend_json(lb: &LoadBalancer) -> serde_json::Value {
    Conn::open(lb.local_addr()).get("/lb/backends").json()[0].clone()
}

#[test]
fn one_client_after_another_reuses_one_connection() {
    let backend = CountingBackend::start();
    let lb = balancer(backend.addr, |_| {});
    let mut conn = Conn::open(lb.local_addr());
    let used: BTreeSet<usize> = (0..20).map(|_| connection_of(&mut conn)).collect();
    assert_eq!(used, BTreeSet::from([1]));
    let stats = backend_json(&lb)["upstream_connections"].clone();
    assert_eq!(
        (stats["opened"].as_u64(), stats["reused"].as_u64(), stats["idle"].as_u64()),
        (Some(1), Some(19), Some(1))
    );
    lb.stop(Duration::from_secs(1));
}

#[test]
fn a_connection_the_backend_closed_while_idle_is_not_reused() {
    let backend = CountingBackend::start();
    let lb = balancer(backend.addr, |_| {});
    let mut conn = Conn::open(lb.local_addr());
    assert_eq!(connection_of(&mut conn), 1);
    backend.close(1);
    // The balancer's side sees the FIN; the next request must go out on a new connection,
    // and succeed: no 502, no failure counted against the backend.
    assert_eq!(connection_of(&mut conn), 2);
    assert_eq!(connection_of(&mut conn), 2);
    let json = backend_json(&lb);
    assert_eq!(json["failed_requests"], 0);
    assert_eq!(json["upstream_connections"]["opened"], 2);
    lb.stop(Duration::from_secs(1));
}

#[test]
fn after_a_burst_one_connection_stays_in_use_and_the_surplus_ages_out() {
    let backend = CountingBackend::start();
    let lb = balancer(backend.addr, |c| c.pool.upstream_keepalive_timeout = Duration::from_secs_f64(1.0));
    burst(&lb, &backend, 6);
    assert_eq!(backend_json(&lb)["upstream_connections"]["idle"], 6);
    // Steady load, one request at a time for longer than the idle timeout: the most recently
    // returned connection is taken each time, the other five are never used and are closed
    // once they have been idle a second.
    let mut conn = Conn::open(lb.local_addr());
    let mut used = BTreeSet::new();
    let all_aged_out = wait_until(Duration::from_secs(5), || {
        used.insert(connection_of(&mut conn));
        thread::sleep(Duration::from_millis(50));
        backend.closed_by_peer().len() == 5
    });
    assert!(all_aged_out, "closed by the balancer: {:?}", backend.closed_by_peer());
    assert_eq!(used.len(), 1, "steady load used {used:?}");
    assert!(!backend.closed_by_peer().contains(used.first().unwrap()), "the connection in use stays open");
    assert_eq!(backend.opened(), 6, "no new connection was needed");
    lb.stop(Duration::from_secs(1));
}

#[test]
fn idle_connections_past_upstream_keepalive_are_closed_and_the_rest_reused() {
    // Which ones go (the least recently used) is the unit test
    // pool::tests::beyond_the_limit_the_least_recently_used_is_closed: here the returns of one
    // burst come back at about the same moment.
    let backend = CountingBackend::start();
    let lb = balancer(backend.addr, |c| c.pool.upstream_keepalive = Some(2));
    burst(&lb, &backend, 6);
    assert!(
        wait_until(Duration::from_secs(5), || backend.closed_by_peer().len() == 4),
        "{:?}",
        backend.closed_by_peer()
    );
    assert_eq!(backend_json(&lb)["upstream_connections"]["idle"], 2);
    // Requests now use only the two kept.
    let mut conn = Conn::open(lb.local_addr());
    for _ in 0..5 {
        assert!(!backend.closed_by_peer().contains(&connection_of(&mut conn)));
    }
    assert_eq!(backend.opened(), 6);
    lb.stop(Duration::from_secs(1));
}

#[test]
fn upstream_keepalive_zero_closes_every_connection_after_its_answer() {
    let backend = CountingBackend::start();
    let lb = balancer(backend.addr, |c| c.pool.upstream_keepalive = Some(0));
    let mut conn = Conn::open(lb.local_addr());
    let used: Vec<usize> = (0..4).map(|_| connection_of(&mut conn)).collect();
    assert_eq!(used, vec![1, 2, 3, 4]);
    assert!(wait_until(Duration::from_secs(5), || backend.closed_by_peer().len() == 4));
    lb.stop(Duration::from_secs(1));
}

#[test]
fn each_backend_keeps_its_own_idle_connections() {
    let (a, b) = (CountingBackend::start(), CountingBackend::start());
    let lb = balancer(a.addr, |c| {
        c.backends.push(BackendConfig::new("127.0.0.1", b.addr.port(), 1));
        c.pool.upstream_keepalive = Some(1);
    });
    // Round robin alternates; with one idle connection allowed per backend, each backend's
    // requests still all go out on its one connection.
    let mut conn = Conn::open(lb.local_addr());
    let used: Vec<usize> = (0..10).map(|_| connection_of(&mut conn)).collect();
    assert_eq!(used, vec![1; 10]);
    assert_eq!((a.opened(), b.opened()), (1, 1));
    lb.stop(Duration::from_secs(1));
}
