//! The signals an operator (or logrotate) sends a running `lb-sync`, as an nginx user expects
//! them: USR1 reopens the log files (nothing lost across `mv` + USR1 under load), HUP reloads and
//! reopens, USR2 and the other signals nobody should send are logged and ignored, SIGTERM
//! stops it at any moment after start, within `shutdown_timeout` + 1 s, and a second one while
//! it stops exits at once (status 1).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::faults::{Fault, FaultyBackend};
use common::lb::{listening_addr, Lb};
use common::{backends, free_ports, kill, wait_until, ChildProcess, Conn};

/// The arguments of every lb-backend these tests start.
const BACKEND_ARGS: &[&str] = &["--threads", "32"];

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Keep-alive GETs from `clients` threads, each bounded to `per_client` requests; every answer is
/// counted, with the path of each request unique (`/c<client>-<n>`) so the access log can be
/// matched line by line.
struct Traffic {
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Answered>>>,
}

/// One request a client had answered: its path, when it was sent and when its answer had come.
struct Answered {
    path: String,
    sent: Instant,
    answered: Instant,
}

impl Traffic {
    fn start(addr: SocketAddr, clients: usize, per_client: usize) -> Traffic {
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|c| {
                let (sent, stop) = (Arc::clone(&sent), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut conn = Conn::open(addr);
                    let mut answered = Vec::new();
                    for n in 0..per_client {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let path = format!("/c{c}-{n}");
                        let at = Instant::now();
                        let resp = conn.get(&path);
                        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
                        answered.push(Answered { path, sent: at, answered: Instant::now() });
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    answered
                })
            })
            .collect();
        Traffic { sent, stop, threads }
    }

    fn answered(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the clients (each finishes its request); each client's answered requests, in order.
    fn stop(self) -> Vec<Vec<Answered>> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().unwrap()).collect()
    }
}

/// The request path of a combined access-log line (`"GET /c1-2 HTTP/1.1"`).
fn logged_path(line: &str) -> Option<&str> {
    line.split_once("\"GET ")?.1.split(' ').next()
}

#[test]
fn mv_and_usr1_under_load_lose_no_access_log_line_and_move_both_logs_to_new_files() {
    let (_children, addrs) = backends(2, BACKEND_ARGS);
    let dir = std::env::temp_dir().join(format!("lb-sync-rotate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (access, log) = (dir.join("access.log"), dir.join("lb-sync.log"));
    let settings =
        format!(r#""access_log": true, "access_log_file": "{}", "log_file": "{}""#, access.display(), log.display());
    let lb = Lb::start(&addrs, &settings);
    let traffic = Traffic::start(lb.addr, 16, 1500);
    assert!(wait_until(Duration::from_secs(10), || traffic.answered() >= 1000), "load never got going");
    // logrotate's way: rename, then tell the process (postrotate kill -USR1).
    std::fs::rename(&access, dir.join("access.log.1")).unwrap();
    std::fs::rename(&log, dir.join("lb-sync.log.1")).unwrap();
    let before = traffic.answered();
    let signalled = Instant::now();
    lb.signal("USR1");
    // Acknowledged: this line is logged once both files were reopened, and goes to the new file.
    let reopened = || lines(&log).iter().any(|l| l.contains("SIGUSR1: log files reopened"));
    assert!(wait_until(Duration::from_secs(5), reopened), "USR1 not acknowledged: {:?}", lines(&log));
    let acknowledged = Instant::now();
    assert!(access.exists(), "no new access log after USR1");
    assert!(wait_until(Duration::from_secs(10), || traffic.answered() >= before + 1000), "traffic stalled after USR1");
    let clients = traffic.stop();
    let paths: Vec<&str> = clients.iter().flatten().map(|a| a.path.as_str()).collect();
    // Every answered request has its line, in the old file or the new one, exactly once.
    assert!(wait_until(Duration::from_secs(5), || {
        lines(&dir.join("access.log.1")).len() + lines(&access).len() >= paths.len()
    }));
    let (old, new) = (lines(&dir.join("access.log.1")), lines(&access));
    eprintln!(
        "mv + USR1 under 16 keep-alive clients: {} requests, {} lines in the old file, {} in the new",
        paths.len(),
        old.len(),
        new.len()
    );
    assert!(!old.is_empty() && !new.is_empty(), "both files got lines: {} and {}", old.len(), new.len());
    let mut logged: Vec<&str> = old.iter().chain(&new).filter_map(|l| logged_path(l)).collect();
    logged.sort_unstable();
    let mut expected = paths.clone();
    expected.sort_unstable();
    assert_eq!(logged.len(), old.len() + new.len(), "every line is a whole request line");
    assert!(logged == expected, "{} requests answered, {} logged", expected.len(), logged.len());
    // And the split is at the signal. A line is queued when its response has left, before its
    // connection's next request is read: so a request followed on its connection by one answered
    // before the signal was sent has its line in the old file. A request sent after the reopen
    // was acknowledged has its line in the new one. Only those in between may be in either.
    let old_paths: std::collections::HashSet<&str> = old.iter().filter_map(|l| logged_path(l)).collect();
    let new_paths: std::collections::HashSet<&str> = new.iter().filter_map(|l| logged_path(l)).collect();
    let in_old: Vec<&str> = clients
        .iter()
        .flat_map(|c| c.windows(2).filter(|w| w[1].answered < signalled).map(|w| w[0].path.as_str()))
        .collect();
    let in_new: Vec<&str> =
        clients.iter().flatten().filter(|a| a.sent > acknowledged).map(|a| a.path.as_str()).collect();
    eprintln!(
        "{} requests answered before USR1 (less each client's last), {} sent after its acknowledgement",
        in_old.len(),
        in_new.len()
    );
    assert!(!in_old.is_empty() && !in_new.is_empty(), "{} before, {} after", in_old.len(), in_new.len());
    let misplaced: Vec<&&str> = in_old.iter().filter(|p| !old_paths.contains(**p)).collect();
    assert!(misplaced.is_empty(), "answered before USR1, not in the old file: {misplaced:?}");
    let misplaced: Vec<&&str> = in_new.iter().filter(|p| !new_paths.contains(**p)).collect();
    assert!(misplaced.is_empty(), "sent after USR1 was acknowledged, not in the new file: {misplaced:?}");
    // The process log moved too: its start is in the old file, its USR1 line (waited for above)
    // only in the new.
    let old_log = lines(&dir.join("lb-sync.log.1"));
    assert!(old_log.iter().any(|l| l.contains("listening on")), "{old_log:?}");
    assert!(!old_log.iter().any(|l| l.contains("SIGUSR1")), "{old_log:?}");
    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hup_reloads_and_reopens_the_log_files() {
    let (_children, addrs) = backends(1, BACKEND_ARGS);
    let dir = std::env::temp_dir().join(format!("lb-sync-hup-reopen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let access = dir.join("access.log");
    let settings = format!(r#""access_log": true, "access_log_file": "{}""#, access.display());
    let lb = Lb::start(&addrs, &settings);
    assert_eq!(Conn::open(lb.addr).get("/before").status, 200);
    std::fs::rename(&access, dir.join("access.log.1")).unwrap();
    lb.signal("HUP");
    assert!(lb.wait_log("configuration reloaded", Duration::from_secs(5)), "{}", lb.log());
    assert!(wait_until(Duration::from_secs(5), || access.exists()), "HUP did not reopen the access log");
    assert_eq!(Conn::open(lb.addr).get("/after").status, 200);
    assert!(wait_until(Duration::from_secs(5), || lines(&access).iter().any(|l| l.contains("/after"))));
    let old = lines(&dir.join("access.log.1"));
    assert!(old.iter().any(|l| l.contains("/before")) && !old.iter().any(|l| l.contains("/after")), "{old:?}");
    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn usr2_and_other_signals_nobody_should_send_are_logged_and_ignored() {
    let (_children, addrs) = backends(1, BACKEND_ARGS);
    let mut lb = Lb::start(&addrs, "");
    // Each of these ends a process by default (PIPE is ignored by Rust's runtime already).
    let ignored = ["USR2", "ALRM", "VTALRM", "PROF", "IO", "PWR", "XCPU", "XFSZ", "PIPE"];
    for (i, signal) in ignored.iter().enumerate() {
        lb.signal(signal);
        if *signal != "PIPE" {
            let line = format!("SIG{signal} ignored");
            assert!(
                wait_until(Duration::from_secs(5), || lb.log().matches(" ignored").count() > i),
                "no log line for SIG{signal}: {}",
                lb.log()
            );
            assert!(lb.log().contains(&line), "{}", lb.log());
        }
        assert!(lb.child.try_wait().unwrap().is_none(), "SIG{signal} ended it: {}", lb.log());
        assert_eq!(Conn::open(lb.addr).get("/").status, 200, "after SIG{signal}");
    }
    assert!(lb.log().contains("SIGUSR2 ignored (no binary upgrade here"), "{}", lb.log());
    // And it still stops as asked.
    lb.signal("TERM");
    assert_eq!(lb.wait_exit(Duration::from_secs(10)).expect("exited").code(), Some(0), "{}", lb.log());
}

#[test]
fn sigterm_stops_it_even_when_nobody_reads_its_stderr() {
    // Its log (and access log) on a pipe nobody reads: once the pipe is full the log thread
    // blocks on write(2). Requests go on (a worker never waits for the log), and a stop must not
    // wait for that write either.
    let (_children, addrs) = backends(1, BACKEND_ARGS);
    let dir = std::env::temp_dir().join(format!("lb-sync-stuck-stderr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let settings = format!(r#""access_log": true, "shutdown_timeout": {SHUTDOWN_TIMEOUT}"#);
    std::fs::write(dir.join("config.json"), common::lb::config_json(&addrs, &settings)).unwrap();
    let child = common::lb::lb_command()
        .arg("--config")
        .arg(dir.join("config.json"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lb-sync");
    // Killed and reaped if an assertion fails first (its stderr pipe, unread, goes with it).
    let mut lb = ChildProcess { child, ready_line: String::new() };
    BufReader::new(lb.child.stdout.take().unwrap()).read_line(&mut lb.ready_line).unwrap();
    let addr = listening_addr(&lb.ready_line).unwrap();
    // 3000 access-log lines, several times what a pipe holds (64 KiB).
    let mut conn = Conn::open(addr);
    for _ in 0..3000 {
        assert_eq!(conn.get("/").status, 200);
    }
    drop(conn);
    kill(lb.pid(), "TERM");
    let signalled = Instant::now();
    let limit = Duration::from_secs_f64(SHUTDOWN_TIMEOUT + 1.0);
    let exited = wait_until(limit + Duration::from_secs(10), || lb.child.try_wait().unwrap().is_some());
    let took = signalled.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(exited && took <= limit, "exited: {exited}, {took:?} after SIGTERM (limit {limit:?})");
    let status = lb.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn a_second_sigterm_while_stopping_exits_at_once_with_status_1() {
    // A request held by a backend that never answers: the graceful stop would wait for it up to
    // shutdown_timeout (60 s), far past the 10 s this test waits for the exit.
    let silent = FaultyBackend::start(Fault::Silent);
    let mut lb = Lb::start(&[silent.addr], r#""request_timeout": 600, "shutdown_timeout": 60"#);
    let addr = lb.addr;
    let held = std::thread::spawn(move || {
        let mut conn = Conn::open(addr);
        conn.send(b"GET /held HTTP/1.1\r\nHost: t\r\n\r\n");
        conn.rest()
    });
    assert!(wait_until(Duration::from_secs(5), || silent.hits() == 1), "the request never reached the backend");
    lb.signal("TERM");
    // Stopping, and held by the request: it says so, and its listener refuses new connections.
    assert!(lb.wait_log("SIGTERM: stopping", Duration::from_secs(5)), "{}", lb.log());
    assert!(lb.log().contains("1 request(s) to backends in flight get up to 60.0 s"), "{}", lb.log());
    assert!(wait_until(Duration::from_secs(5), || TcpStream::connect(addr).is_err()), "still accepting");
    assert!(lb.child.try_wait().unwrap().is_none(), "exited with a request in flight: {}", lb.log());
    let signalled = Instant::now();
    lb.signal("TERM");
    let status = lb.wait_exit(Duration::from_secs(10));
    eprintln!("second SIGTERM while stopping: exited {status:?} after {:?}", signalled.elapsed());
    let status = status.unwrap_or_else(|| panic!("still running 10 s after a second SIGTERM: {}", lb.log()));
    assert_eq!(status.code(), Some(1), "{status}: {}", lb.log());
    assert!(lb.log().contains("SIGTERM while stopping: exiting now"), "{}", lb.log());
    // The held request was cut off with the process, unanswered.
    assert_eq!(String::from_utf8_lossy(&held.join().unwrap()), "");
}

#[test]
fn sigquit_stops_gracefully_as_nginx_quit_does() {
    let (_children, addrs) = backends(1, BACKEND_ARGS);
    let mut lb = Lb::start(&addrs, "");
    assert_eq!(Conn::open(lb.addr).get("/").status, 200);
    lb.signal("QUIT");
    assert_eq!(lb.wait_exit(Duration::from_secs(10)).expect("exited").code(), Some(0), "{}", lb.log());
    assert!(lb.log().contains("SIGQUIT: stopping"), "{}", lb.log());
}

/// A small xorshift generator: the moments are random, and the seed is printed so a failure
/// can be replayed (`LB_SIGNAL_SEED=N`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// What runs around one of the starts.
#[derive(Clone, Copy, Debug)]
enum Scene {
    BackendsUp,
    BackendsDown,
    TrafficUp,
    TrafficDown,
}

/// How one start ended.
struct Outcome {
    scene: Scene,
    delay: Duration,
    ready: bool,
    status: Option<ExitStatus>,
    took: Duration,
    log: String,
}

const SHUTDOWN_TIMEOUT: f64 = 1.0;

/// Starts lb-sync (not waiting for it), sends SIGTERM `delay` after the spawn, and times its exit.
fn start_and_terminate(up: &[SocketAddr], down: &[SocketAddr], scene: Scene, delay: Duration, dir: &Path) -> Outcome {
    let backends = match scene {
        Scene::BackendsUp | Scene::TrafficUp => up,
        Scene::BackendsDown | Scene::TrafficDown => down,
    };
    let settings = format!(
        r#""threads": 16, "shutdown_timeout": {SHUTDOWN_TIMEOUT}, "health_check_interval": 0.5, "access_log": true, "access_log_file": "{}""#,
        dir.join("access.log").display()
    );
    std::fs::write(dir.join("config.json"), common::lb::config_json(backends, &settings)).unwrap();
    let log_path = dir.join("stderr.log");
    let child = common::lb::lb_command()
        .arg("--config")
        .arg(dir.join("config.json"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("spawn lb-sync");
    let spawned = Instant::now();
    // Killed and reaped if this thread panics before it exits; its ready line is read below.
    let mut lb = ChildProcess { child, ready_line: String::new() };
    let stdout = lb.child.stdout.take().unwrap();
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<SocketAddr>(1);
    let reader = std::thread::spawn(move || {
        let mut line = String::new();
        let mut stdout = BufReader::new(stdout);
        let _ = stdout.read_line(&mut line);
        let addr = listening_addr(&line);
        if let Some(addr) = addr {
            let _ = ready_tx.send(addr);
        }
        let _ = stdout.read_to_end(&mut Vec::new());
        addr.is_some()
    });
    let traffic = matches!(scene, Scene::TrafficUp | Scene::TrafficDown).then(|| {
        let ready = ready_rx.clone();
        std::thread::spawn(move || {
            let Ok(addr) = ready.recv_timeout(Duration::from_secs(10)) else { return 0 };
            client_loop(addr, 2000)
        })
    });
    std::thread::sleep(delay.saturating_sub(spawned.elapsed()));
    kill(lb.pid(), "TERM");
    let signalled = Instant::now();
    let limit = Duration::from_secs_f64(SHUTDOWN_TIMEOUT + 1.0);
    let status = loop {
        if let Some(status) = lb.child.try_wait().unwrap() {
            break Some(status);
        }
        if signalled.elapsed() > limit + Duration::from_secs(10) {
            let _ = lb.child.kill();
            let _ = lb.child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = signalled.elapsed();
    let ready = reader.join().unwrap();
    if let Some(traffic) = traffic {
        let _ = traffic.join();
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    Outcome { scene, delay, ready, status, took, log }
}

/// Keep-alive GETs until the listener is gone (or `most` requests): the answers do not matter
/// here, only that requests are in flight when the signal comes.
fn client_loop(addr: SocketAddr, most: usize) -> usize {
    let mut done = 0;
    while done < most {
        let Ok(stream) = TcpStream::connect(addr) else { return done };
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = BufReader::new(stream);
        loop {
            if reader.get_mut().write_all(b"GET /?delay_ms=20 HTTP/1.1\r\nHost: t\r\n\r\n").is_err() {
                break;
            }
            match common::read_response(&mut reader, false) {
                Ok(resp) => {
                    done += 1;
                    if done >= most || resp.header("connection") == Some("close") {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
    done
}

#[test]
fn sigterm_at_any_moment_in_the_first_3_s_stops_within_shutdown_timeout_plus_1_s() {
    let (_children, up) = backends(2, BACKEND_ARGS);
    // Two ports nothing listens on: bound, then closed.
    let down: Vec<SocketAddr> =
        free_ports(2).into_iter().map(|port| SocketAddr::from(([127, 0, 0, 1], port))).collect();
    let seed = std::env::var("LB_SIGNAL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("SIGTERM at random moments: seed {seed} (LB_SIGNAL_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let scenes = [Scene::BackendsUp, Scene::BackendsDown, Scene::TrafficUp, Scene::TrafficDown];
    // One in five in the first 40 ms, while it is still starting.
    let plan: Vec<(Scene, Duration)> = (0..50)
        .map(|i| (scenes[i % 4], Duration::from_millis(rng.next() % if i % 5 == 0 { 41 } else { 3001 })))
        .collect();
    // Five batches of ten at once keep the whole under half a minute.
    let root = std::env::temp_dir().join(format!("lb-sync-sigterm-{}", std::process::id()));
    let mut outcomes = Vec::new();
    for (b, batch) in plan.chunks(10).enumerate() {
        let runs: Vec<_> = batch
            .iter()
            .enumerate()
            .map(|(i, &(scene, delay))| {
                let (up, down) = (up.clone(), down.clone());
                let dir = root.join(format!("{b}-{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                std::thread::spawn(move || start_and_terminate(&up, &down, scene, delay, &dir))
            })
            .collect();
        outcomes.extend(runs.into_iter().map(|r| r.join().unwrap()));
    }
    let _ = std::fs::remove_dir_all(&root);
    let limit = Duration::from_secs_f64(SHUTDOWN_TIMEOUT + 1.0);
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap();
    let before_ready = outcomes.iter().filter(|o| !o.ready).count();
    eprintln!("50 starts, SIGTERM 0-3 s after each: slowest exit {slowest:?}; {before_ready} stopped before ready");
    for o in &outcomes {
        let what = format!("{:?}, SIGTERM {:?} after the spawn", o.scene, o.delay);
        let status = o.status.unwrap_or_else(|| panic!("{what}: still running 10 s past the limit; log:\n{}", o.log));
        assert!(o.took <= limit, "{what}: exited {:?} after SIGTERM (limit {limit:?}); log:\n{}", o.took, o.log);
        // Before it is ready a stop exits at once, 143 (or, in the first instant of the process,
        // before the handlers are in place, by the signal itself); once ready it stops
        // gracefully, with status 0.
        let early = !o.ready && (status.code() == Some(143) || status.signal() == Some(15));
        assert!(status.code() == Some(0) || early, "{what}: {status}; log:\n{}", o.log);
        assert!(!o.log.contains("exiting now"), "{what}: the stop had to be cut short; log:\n{}", o.log);
    }
}
