//! Tools some tests need besides Rust (etcd, openssl, promtool, curl, python3 and its
//! `websockets`), found the same way everywhere: a test asks [`require`] first. Where the tool
//! is missing the test is skipped with a `skipped: <test>: <why>` line that `cargo test` shows
//! (written past the harness's output capture); under CI (`CI` set, as `.ci/run` does, which
//! installs them all) a missing tool fails the test instead.

use std::io::Write;
use std::process::{Command, Stdio};

/// A tool and how to tell that it works.
pub struct Tool {
    /// What it is called in the skip line.
    pub name: &'static str,
    /// A command that succeeds only when the tool works (its output is not shown).
    probe: fn() -> Command,
    /// How to get it.
    install: &'static str,
}

fn command(program: &str, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args);
    command
}

pub const ETCD: Tool = Tool {
    name: "etcd",
    probe: || command(&std::env::var("ETCD").unwrap_or_else(|_| "etcd".into()), &["--version"]),
    install: "apt-get install etcd-server, or set ETCD=/path/to/etcd",
};
pub const OPENSSL: Tool = Tool {
    name: "the openssl command (it makes the test certificates)",
    probe: || command("openssl", &["version"]),
    install: "apt-get install openssl",
};
pub const PROMTOOL: Tool =
    Tool { name: "promtool", probe: || command("promtool", &["--version"]), install: "apt-get install prometheus" };
pub const CURL: Tool =
    Tool { name: "curl", probe: || command("curl", &["--version"]), install: "apt-get install curl" };
pub const NGINX: Tool = Tool { name: "nginx", probe: || command("nginx", &["-v"]), install: "apt-get install nginx" };
pub const HAPROXY: Tool =
    Tool { name: "haproxy", probe: || command("haproxy", &["-v"]), install: "apt-get install haproxy" };
pub const PYTHON3: Tool = Tool {
    name: "python3 with its ssl module",
    probe: || command("python3", &["-c", "import ssl"]),
    install: "apt-get install python3",
};
pub const PYTHON_WEBSOCKETS: Tool = Tool {
    name: "Python's websockets library",
    probe: || command("python3", &["-c", "import websockets"]),
    install: "python3 -m pip install websockets, or apt-get install python3-websockets",
};

/// Whether every one of `tools` works. When one does not: under CI the test fails naming it;
/// elsewhere a `skipped:` line goes to stderr and the answer is false (the test returns).
pub fn require(tools: &[&Tool]) -> bool {
    let missing: Vec<&&Tool> = tools
        .iter()
        .filter(|tool| {
            let mut probe = (tool.probe)();
            !probe.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
        })
        .collect();
    let Some(first) = missing.first() else { return true };
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    let why = format!("{} is not installed ({})", first.name, first.install);
    assert!(std::env::var_os("CI").is_none(), "{test}: {why}; CI installs every tool the tests need (.ci/run)");
    // Straight to the process's stderr: `eprintln!` would be captured with a passing test's
    // output and never seen.
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {why}");
    false
}
