//! A real etcd for the registry tests: its own data directory and two free loopback ports
//! (client and peer), waited for until it answers, killed by PID and its directory removed when
//! dropped. etcd comes from Debian's `etcd-server` (`.ci/run` installs it); the tests that use it
//! call `tools::require` first: without etcd they skip outside CI and fail under it (`CI` set),
//! so that CI never passes without running these.
//!
//! Direct reads and writes go through etcd's v3 JSON gateway with ureq, as lb-sync's do, but
//! with a base64 of the tests' own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The etcd binary: `$ETCD`, else `etcd` on the `PATH`.
fn binary() -> String {
    std::env::var("ETCD").unwrap_or_else(|_| "etcd".to_string())
}

pub struct Etcd {
    child: Option<Child>,
    pub client: SocketAddr,
    peer: SocketAddr,
    dir: PathBuf,
    agent: ureq::Agent,
}

impl Etcd {
    /// Starts a one-member etcd on loopback and waits until it answers.
    pub fn start() -> Etcd {
        let dir = super::unique_dir("etcd");
        let client = SocketAddr::from(([127, 0, 0, 1], super::unused_port()));
        let peer = SocketAddr::from(([127, 0, 0, 1], super::unused_port()));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut etcd = Etcd { child: None, client, peer, dir, agent };
        etcd.launch();
        etcd
    }

    fn launch(&mut self) {
        let (client, peer) = (format!("http://{}", self.client), format!("http://{}", self.peer));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("etcd.log")).unwrap();
        let child = Command::new(binary())
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) => panic!(
                "cannot start {} ({e}): etcd is required for these tests (apt-get install etcd-server)",
                binary()
            ),
        };
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut answer) = self.agent.get(format!("http://{}/health", self.client)).call() {
                if answer.body_mut().read_to_string().is_ok_and(|body| body.contains("true")) {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("etcd exited ({status}) before answering; its log:\n{}", self.log());
            }
            assert!(Instant::now() < end, "etcd did not answer within 30 s; its log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills it (by PID) and waits for it to be gone; its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Starts it again with the same data on another client port: up for the test, still gone
    /// for whoever uses the old one.
    pub fn restart_elsewhere(&mut self) -> SocketAddr {
        let old = self.client;
        self.client = SocketAddr::from(([127, 0, 0, 1], super::unused_port()));
        self.restart();
        old
    }

    /// Starts it again with the same data on client port `client`.
    pub fn restart_at(&mut self, client: SocketAddr) {
        self.client = client;
        self.restart();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// `etcd://127.0.0.1:PORT/PREFIX`, for `--registry`.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}{prefix}", self.client)
    }

    fn call(&self, path: &str, body: Value) -> Value {
        let mut answer = self
            .agent
            .post(format!("http://{}{path}", self.client))
            .send(body.to_string())
            .unwrap_or_else(|e| panic!("etcd {path}: {e}"));
        let text = answer.body_mut().read_to_string().unwrap();
        assert_eq!(answer.status().as_u16(), 200, "etcd {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Writes a key; the revision of the write.
    pub fn put(&self, key: &str, value: &str) -> i64 {
        let answer =
            self.call("/v3/kv/put", json!({ "key": encode(key.as_bytes()), "value": encode(value.as_bytes()) }));
        revision(&answer)
    }

    /// A key's value, if it has one.
    pub fn get(&self, key: &str) -> Option<String> {
        let answer = self.call("/v3/kv/range", json!({ "key": encode(key.as_bytes()) }));
        let value = answer["kvs"].get(0)?["value"].as_str().unwrap_or("").to_string();
        Some(String::from_utf8(decode(&value)).unwrap())
    }

    /// Every key under `prefix`, with its value.
    pub fn list(&self, prefix: &str) -> Vec<(String, String)> {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        let answer = self.call("/v3/kv/range", json!({ "key": encode(prefix.as_bytes()), "range_end": encode(&end) }));
        let kvs = answer["kvs"].as_array().cloned().unwrap_or_default();
        kvs.iter()
            .map(|kv| {
                let text = |field: &str| String::from_utf8(decode(kv[field].as_str().unwrap_or(""))).unwrap();
                (text("key"), text("value"))
            })
            .collect()
    }

    /// Compacts the history up to the current revision (watches from before it are cancelled).
    pub fn compact(&self) -> i64 {
        let now = revision(&self.call("/v3/kv/range", json!({ "key": encode(b"compact"), "limit": 1 })));
        self.call("/v3/kv/compaction", json!({ "revision": now.to_string(), "physical": true }));
        now
    }
}

fn revision(answer: &Value) -> i64 {
    answer["header"]["revision"].as_str().and_then(|r| r.parse().ok()).expect("a revision")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut group = [0u8; 3];
        group[..chunk.len()].copy_from_slice(chunk);
        let sextets =
            [group[0] >> 2, (group[0] & 3) << 4 | group[1] >> 4, (group[1] & 15) << 2 | group[2] >> 6, group[2] & 63];
        for (i, s) in sextets.iter().enumerate() {
            out.push(if i <= chunk.len() { ALPHABET[*s as usize] as char } else { '=' });
        }
    }
    out
}

/// Standard base64, padding ignored.
pub fn decode(text: &str) -> Vec<u8> {
    let values: Vec<u8> = text
        .bytes()
        .filter(|&b| b != b'=')
        .map(|b| ALPHABET.iter().position(|&a| a == b).expect("base64") as u8)
        .collect();
    values
        .chunks(4)
        .flat_map(|c| {
            let n = c.iter().enumerate().fold(0u32, |n, (i, v)| n | u32::from(*v) << (18 - 6 * i));
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            bytes.into_iter().take(c.len() - 1).collect::<Vec<_>>()
        })
        .collect()
}
