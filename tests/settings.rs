//! Every setting's valid range, at start (flags and config file), with `--check-config`, and in
//! the README: out of range is one clear line and exit 2 (1 for `--check-config`), never a
//! panic, never a balancer that starts and refuses everything. And `examples/lb-sync.json`
//! passes `--check-config`, with every key explained in the README.

mod common;

use common::lb::lb_sync;
use common::temp_file;
use lb_sync::config::RANGES;

/// Runs lb-sync expecting a refusal: the exit status, and stderr as one line.
fn refused(args: &[&str], status: i32) -> String {
    let output = lb_sync(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(status), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{args:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: one line, got {stderr:?}");
    assert!(output.stdout.is_empty(), "{args:?}: nothing on stdout (no ready line)");
    stderr.trim_end().to_string()
}

#[test]
fn out_of_range_flags_are_one_line_and_exit_2() {
    let cases: [(&[&str], &str); 9] = [
        (&["--threads", "100000"], "lb-sync: threads must be 1-10000, got 100000"),
        (&["--max-body-bytes", "1099511627777"], "lb-sync: max_body_bytes must be 0-1 TiB, got 1099511627777"),
        (&["--client-body-temp-client-share", "0"], "lb-sync: client_body_temp_client_share must be 0.01-1, got 0"),
        (&["--threads", "0"], "lb-sync: threads must be 1-10000, got 0"),
        (&["--max-tries", "1000000000000"], "lb-sync: max_tries must be 1-100, got 1000000000000"),
        (&["--max-tries", "0"], "lb-sync: max_tries must be 1-100, got 0"),
        (&["--request-timeout", "0"], "lb-sync: request_timeout must be 0.001-86400 s, got 0"),
        (&["--shutdown-timeout", "-1"], "lb-sync: shutdown_timeout must be 0-86400 s, got -1"),
        (
            &["--health-check-interval", "1e9"],
            "lb-sync: health_check_interval must be 0 (off) or 0.01-86400 s, got 1000000000",
        ),
    ];
    for (args, message) in cases {
        let mut all = vec!["--port", "0", "--backend", "127.0.0.1:9"];
        all.extend_from_slice(args);
        assert_eq!(refused(&all, 2), message);
    }
}

#[test]
fn out_of_range_config_file_values_are_one_line_and_exit_2() {
    let cases = [
        (r#"{"max_connections": 0}"#, "lb-sync: max_connections must be 1-1000000, got 0"),
        (r#"{"queue_capacity": 0}"#, "lb-sync: queue_capacity must be 1-1000000, got 0"),
        (
            r#"{"retry_body_max_bytes": 18446744073709551615}"#,
            "lb-sync: retry_body_max_bytes must be 0-1 GiB, got 18446744073709551615",
        ),
        (r#"{"max_body_bytes": 1099511627777}"#, "lb-sync: max_body_bytes must be 0-1 TiB, got 1099511627777"),
        (
            r#"{"client_body_buffer_size": 1099511627776}"#,
            "lb-sync: client_body_buffer_size must be 0-1 GiB, got 1099511627776",
        ),
        (r#"{"keep_alive_timeout": 0}"#, "lb-sync: keep_alive_timeout must be 1-86400 s, got 0"),
        (r#"{"client_body_temp_free_share": 1.5}"#, "lb-sync: client_body_temp_free_share must be 0.01-1, got 1.5"),
        (r#"{"backend_max_connections": 0}"#, "lb-sync: backend_max_connections must be 1-1000000, got 0"),
        (r#"{"breaker_consecutive_failures": 0}"#, "lb-sync: breaker_consecutive_failures must be 1-1000000, got 0"),
        (
            r#"{"backends": [{"host": "127.0.0.1", "port": 9, "weight": 2000000}]}"#,
            "lb-sync: backend 127.0.0.1:9: weight must be 1-1000000, got 2000000",
        ),
    ];
    for (i, (json, message)) in cases.iter().enumerate() {
        let path = temp_file(&format!("range-{i}.json"), json);
        assert_eq!(refused(&["--port", "0", "--config", path.to_str().unwrap()], 2), *message, "{json}");
    }
    // A value of the wrong type is one line too, with where it is.
    let path = temp_file("negative.json", r#"{"threads": -1}"#);
    let line = refused(&["--config", path.to_str().unwrap()], 2);
    assert!(line.contains("invalid value: integer `-1`, expected usize at line 1"), "{line}");
}

#[test]
fn check_config_says_ok_and_exits_0_or_gives_the_reason_and_exits_1() {
    let good = temp_file(
        "good.json",
        r#"{"port": 0, "algorithm": "least_connections", "backends": [{"host": "localhost", "port": 9001}, {"host": "127.0.0.1", "port": 9002, "weight": 3}]}"#,
    );
    let output = lb_sync(&["--config", good.to_str().unwrap(), "--check-config"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "lb-sync: configuration ok: 2 backend(s), least_connections, 256 threads, port 0\n"
    );

    let bad = temp_file("bad.json", r#"{"max_connections": 0}"#);
    assert_eq!(
        refused(&["--config", bad.to_str().unwrap(), "--check-config"], 1),
        "lb-sync: max_connections must be 1-1000000, got 0"
    );
    let unknown_key = temp_file("typo.json", r#"{"max_conections": 10}"#);
    let line = refused(&["--config", unknown_key.to_str().unwrap(), "--check-config"], 1);
    assert!(line.contains("unknown field `max_conections`"), "{line}");
    let unresolvable = temp_file("dns.json", r#"{"backends": [{"host": "no-such-host.invalid", "port": 80}]}"#);
    let line = refused(&["--config", unresolvable.to_str().unwrap(), "--check-config"], 1);
    assert!(line.starts_with("lb-sync: backend backend1: cannot resolve no-such-host.invalid"), "{line}");
    let missing = refused(&["--config", "/nonexistent/lb.json", "--check-config"], 1);
    assert!(missing.starts_with("lb-sync: cannot read config file /nonexistent/lb.json"), "{missing}");
}

#[test]
fn the_readme_lists_every_range() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let missing: Vec<String> = RANGES
        .iter()
        .map(|r| format!("| `{}` | {} |", r.key, r.describe()))
        .filter(|line| !readme.contains(line.as_str()))
        .collect();
    assert!(missing.is_empty(), "README.md lacks these lines of its valid-range table:\n{}", missing.join("\n"));
}

#[test]
fn the_example_configuration_file_passes_check_config_and_the_readme_explains_every_key() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/lb-sync.json");
    let output = lb_sync(&["--config", example, "--check-config"]);
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{said}");
    assert_eq!(
        said.trim_end(),
        "lb-sync: configuration ok: 3 backend(s), weighted_round_robin, 256 threads, port 8080"
    );
    // JSON has no comments: the README's table says what each key is for, and names no other.
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    let mut in_file: Vec<String> = json.as_object().unwrap().keys().cloned().collect();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("### An example configuration file").nth(1).expect("the README's example section");
    let mut in_table: Vec<String> = section
        .lines()
        .skip_while(|l| !l.starts_with("| key"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .flat_map(|l| {
            l.split('|').nth(1).unwrap().split(',').map(|k| k.trim().trim_matches('`').to_string()).collect::<Vec<_>>()
        })
        .collect();
    in_file.sort();
    in_table.sort();
    assert_eq!(in_table, in_file, "the README's example table and examples/lb-sync.json");
}
