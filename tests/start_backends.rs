//! `scripts/start_backends.sh` supervises its backends: one that dies is logged and the others
//! keep serving; the script starts it again beside them; a balancer in front loses no GET, and
//! the restarted backend gets traffic as soon as its health checks pass (not after a breaker
//! cool-down that grew while it was dead).

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::lb::Lb;
use common::load::Load;
use common::{free_ports, kill, wait_until, Conn};

/// One run of the script, its stderr in a file; stopped with SIGTERM (by PID) when dropped.
struct Script {
    child: Child,
    log: PathBuf,
}

impl Script {
    fn start(ports: &[u16]) -> Script {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!("start-backends-{}-{n}.log", std::process::id()));
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        let child = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/start_backends.sh"))
            .args(["--ports", &list.join(" ")])
            .env("LB_BACKEND", env!("CARGO_BIN_EXE_lb-backend"))
            .env("LB_SYNC", env!("CARGO_BIN_EXE_lb-sync"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("run start_backends.sh");
        Script { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, text: &str) -> bool {
        wait_until(Duration::from_secs(10), || self.log().contains(text))
    }

    /// The PID of the backend it started on `port`.
    fn backend_pid(&self, port: u16) -> u32 {
        let marker = format!("started backend on port {port} (pid ");
        let log = self.log();
        let rest = &log[log.find(&marker).expect("started") + marker.len()..];
        rest[..rest.find(')').unwrap()].parse().unwrap()
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if self.running() {
            let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        }
        if self.wait_exit(Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok_and(|s| {
        drop(s);
        let mut conn = Conn::open(SocketAddr::from(([127, 0, 0, 1], port)));
        conn.get("/health").status == 200
    })
}

#[test]
fn a_dead_backend_is_logged_the_others_keep_running_and_the_script_restarts_it() {
    let ports = free_ports(3);
    let mut script = Script::start(&ports);
    assert!(script.wait_log("3 backend(s) running"), "{}", script.log());
    assert!(ports.iter().all(|&p| answers(p)));
    let victim = script.backend_pid(ports[1]);
    kill(victim, "KILL");
    let logged = format!("backend on port {} (pid {victim}) exited with status 137; 2 other(s) keep running", ports[1]);
    assert!(script.wait_log(&logged), "{}", script.log());
    assert!(script.running(), "the script stopped with one backend");
    assert!(answers(ports[0]) && answers(ports[2]), "the others stopped");
    assert!(!answers(ports[1]));
    // Started again with the script, beside the others.
    let mut again = Script::start(&ports[1..2]);
    assert!(again.wait_log("1 backend(s) running"), "{}", again.log());
    assert!(ports.iter().all(|&p| answers(p)));
    assert!(script.running() && again.running());
    // SIGTERM stops a script and its backends, with status 0.
    kill(script.child.id(), "TERM");
    assert_eq!(script.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(wait_until(Duration::from_secs(5), || !answers(ports[0]) && !answers(ports[2])));
    assert!(answers(ports[1]), "the other script's backend runs on");
    drop(again);
}

#[test]
fn a_backend_that_cannot_start_stops_the_set() {
    let ports = free_ports(2);
    let taken = TcpListener::bind(("127.0.0.1", ports[1])).unwrap();
    let mut script = Script::start(&ports);
    assert_eq!(script.wait_exit(Duration::from_secs(15)), Some(1), "{}", script.log());
    assert!(script.log().contains(&format!("backend on port {} (pid", ports[1])), "{}", script.log());
    assert!(wait_until(Duration::from_secs(5), || !answers(ports[0])), "a half-started set was left running");
    drop(taken);
}

/// The balancer in front of three scripted backends: one is killed and started again.
fn kill_and_restart(settings: &str, dead_for: Duration) -> (common::load::Report, Duration, Lb) {
    let ports = free_ports(3);
    let script = Script::start(&ports);
    assert!(script.wait_log("3 backend(s) running"), "{}", script.log());
    let addrs: Vec<SocketAddr> = ports.iter().map(|&p| SocketAddr::from(([127, 0, 0, 1], p))).collect();
    let lb = Lb::start(&addrs, settings);
    let load = Load::start(lb.addr, 8, "/", &[200]);
    assert!(wait_until(Duration::from_secs(10), || load.ok() >= 300));
    kill(script.backend_pid(ports[1]), "KILL");
    std::thread::sleep(dead_for);
    let requests =
        |lb: &Lb| Conn::open(lb.addr).get(&format!("/lb/backends/p{}", ports[1])).json()["total_requests"].as_u64();
    let before = requests(&lb);
    let restarted = Instant::now();
    let again = Script::start(&ports[1..2]);
    assert!(again.wait_log("1 backend(s) running"), "{}", again.log());
    assert!(wait_until(Duration::from_secs(30), || requests(&lb) > before), "no traffic after the restart");
    let back_after = restarted.elapsed();
    let report = load.stop();
    drop(again);
    drop(script);
    (report, back_after, lb)
}

#[test]
fn behind_the_balancer_no_get_fails_and_the_restarted_backend_gets_traffic_within_a_check_interval() {
    // Checks every 0.5 s, down after 2 failures, up after 2 good ones, no slow start: the
    // backend must get requests within rise x interval (+ jitter and one interval of slack).
    let settings = r#""health_check_interval": 0.5, "health_check_fall": 2, "health_check_rise": 2, "health_check_timeout": 0.3, "slow_start": 0"#;
    let (report, back_after, lb) = kill_and_restart(settings, Duration::from_secs(2));
    eprintln!("killed for 2 s, restarted: traffic again after {back_after:?}; clients: {report:?}");
    assert_eq!(report.lost(), 0, "GETs failed while a backend was dead: {report:?}");
    assert!(back_after < Duration::from_millis(2000), "traffic came back after {back_after:?}");
    assert!(lb.log().contains("is UP after 2 good check(s)"), "{}", lb.log());
}

#[test]
fn a_breaker_cool_down_grown_while_the_backend_was_dead_ends_at_its_first_good_probe() {
    // The checks never take it down (fall 1000): only its breaker keeps traffic away. Killed at
    // 0 s, it trips at once (open 2 s), its trial at 2 s fails (open 4 s, to 6 s), its trial at
    // 6 s fails (open 8 s, to 14 s). Restarted at 7 s, it would wait 7 s more for its next trial;
    // its first good probe (checks every 0.5 s) ends the cool-down instead.
    let settings = r#""health_check_interval": 0.5, "health_check_fall": 1000, "health_check_timeout": 0.3, "breaker_cooldown": 2, "breaker_consecutive_failures": 3, "slow_start": 0"#;
    let (report, back_after, lb) = kill_and_restart(settings, Duration::from_secs(7));
    eprintln!("killed for 7 s (breaker open until 14 s), restarted: traffic after {back_after:?}; clients: {report:?}");
    assert_eq!(report.lost(), 0, "{report:?}");
    assert!(lb.log().contains("circuit opened for 8s"), "the cool-down grew: {}", lb.log());
    assert!(
        back_after < Duration::from_millis(1500),
        "traffic came back after {back_after:?}, not within a check interval"
    );
}
