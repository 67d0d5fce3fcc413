//! An `lb-sync` child process for the lifecycle, fault and soak tests: a config file of its own,
//! stderr kept in a file (its log), signals sent with `kill` by PID, and its exit awaited with
//! a deadline. Killed and reaped when dropped. Also lb-sync runs that end at once
//! ([`lb_sync`]) and the address in a ready line ([`listening_addr`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use std::io::{BufRead, BufReader};

pub struct Lb {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub ready_line: String,
}

/// Runs lb-sync with `args` to its end (stdin empty), its stdout and stderr captured: for the
/// runs that exit at once (a refusal, `--check-config`, `--help`).
pub fn lb_sync(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lb-sync"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run lb-sync")
}

/// `lb-sync` as the tests start it: with `--pollers N` when the environment sets
/// `LB_TEST_POLLERS` (CI runs some test files again with one poller; each run's default is the
/// machine's CPUs).
pub fn lb_command() -> Command {
    lb_command_for("")
}

/// [`lb_command`] for a config with these `settings`: one that sets `pollers` itself keeps it.
fn lb_command_for(settings: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lb-sync"));
    if let Some(pollers) = super::test_pollers().filter(|_| !settings.contains(r#""pollers""#)) {
        command.arg("--pollers").arg(pollers.to_string());
    }
    command
}

/// The address in lb-sync's ready line (`... listening on ADDR ...`).
pub fn listening_addr(ready_line: &str) -> Option<SocketAddr> {
    ready_line.split("listening on ").nth(1).and_then(|rest| rest.split(' ').next()).and_then(|a| a.parse().ok())
}

/// `"backends": [...]` for these addresses, each with the id `p<port>` (stable across
/// rewrites of the list).
pub fn backends_json(backends: &[SocketAddr]) -> String {
    let list: Vec<String> =
        backends.iter().map(|a| format!(r#"{{"id": "p{0}", "host": "127.0.0.1", "port": {0}}}"#, a.port())).collect();
    format!(r#""backends": [{}]"#, list.join(", "))
}

/// A config file: loopback, an ephemeral port, no access log, no health checks unless
/// `settings` (JSON object fields) say otherwise, and these backends.
pub fn config_json(backends: &[SocketAddr], settings: &str) -> String {
    let mut fields = vec![r#""host": "127.0.0.1""#.to_string(), r#""port": 0"#.to_string(), backends_json(backends)];
    for (key, default) in [("access_log", "false"), ("health_check_interval", "0")] {
        if !settings.contains(&format!("\"{key}\"")) {
            fields.push(format!(r#""{key}": {default}"#));
        }
    }
    if !settings.trim().is_empty() {
        fields.push(settings.to_string());
    }
    format!("{{{}}}", fields.join(", "))
}

impl Lb {
    /// Starts lb-sync on an ephemeral loopback port with `settings` (JSON object fields, after
    /// a comma) and waits for its ready line.
    pub fn start(backends: &[SocketAddr], settings: &str) -> Lb {
        Lb::start_with_args(backends, settings, &[])
    }

    pub fn start_with_args(backends: &[SocketAddr], settings: &str, args: &[&str]) -> Lb {
        let dir = super::unique_dir("lb");
        std::fs::write(dir.join("config.json"), config_json(backends, settings)).unwrap();
        let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let mut command = lb_command_for(settings);
        command.arg("--config").arg(dir.join("config.json")).args(args);
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
        let mut child = command.spawn().expect("spawn lb-sync");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("ready line");
        let addr = listening_addr(&line)
            .unwrap_or_else(|| panic!("no address in the ready line {line:?}; log: {}", read(&dir.join("stderr.log"))));
        Lb { child, addr, dir, ready_line: line.trim().to_string() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// Rewrites the config file (for a reload).
    pub fn write_config(&self, backends: &[SocketAddr], settings: &str) {
        std::fs::write(self.config_path(), config_json(backends, settings)).unwrap();
    }

    /// Sends a signal (`TERM`, `INT`, `HUP`) with kill(1), by PID.
    pub fn signal(&self, name: &str) {
        super::kill(self.pid(), name);
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        read(&self.dir.join("stderr.log"))
    }

    /// Polls the log until it contains `text`.
    pub fn wait_log(&self, text: &str, limit: Duration) -> bool {
        super::wait_until(limit, || self.log().contains(text))
    }

    pub fn rss_kb(&self) -> u64 {
        super::proc_status(self.pid(), "VmRSS")
    }

    /// lb-sync's own threads: jemalloc's purging threads (`jemalloc_bg_thd`, started lazily
    /// as arenas are used, at most one per CPU) belong to the allocator, not to any request.
    /// Such a thread carries its creator's name until it names itself, so the count is read
    /// until two readings 100 ms apart agree (at most 2 s).
    pub fn threads(&self) -> u64 {
        let count = || {
            let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid())).expect("task list");
            let named = |task: std::fs::DirEntry| std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            tasks.filter_map(Result::ok).map(named).filter(|name| name.trim() != "jemalloc_bg_thd").count() as u64
        };
        let mut last = count();
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(100));
            let now = count();
            if now == last {
                return now;
            }
            last = now;
        }
        last
    }
}

fn read(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
