//! `lb-sync route`: the real binary explains requests through a config with four pools and
//! eight routes (the winner, why each other route lost, the path upstream, the pool, its
//! algorithm, the first backend), refuses what the front end refuses with its reason, and
//! checks a cases file for CI (`--expect`: exit 0, 1 on a miss, 2 on a bad file). Nothing
//! listens on the backends' ports: the command sends nothing.

mod common;

use std::path::PathBuf;
use std::process::Output;
use std::sync::OnceLock;

use common::lb::lb_sync;
use common::temp_file;

const CONFIG: &str = include_str!("data/route_cli.json");

fn route(args: &[&str]) -> Output {
    // Written once: tests run side by side, and a rewrite could be read half written.
    static CONFIG_FILE: OnceLock<PathBuf> = OnceLock::new();
    let config = CONFIG_FILE.get_or_init(|| temp_file("route_cli.json", CONFIG));
    let mut all = vec!["route", "--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    lb_sync(&all)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The `key: value` line of the output (the first with that key).
fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines().find_map(|line| line.strip_prefix(&format!("{key}: ")))
}

/// The verdict printed for a route (after `->`).
fn verdict<'a>(out: &'a str, route: &str) -> &'a str {
    out.lines()
        .find(|line| line.split_whitespace().next() == Some(route))
        .and_then(|line| line.split(" -> ").nth(1))
        .unwrap_or_else(|| panic!("no line for route {route} in:\n{out}"))
}

#[test]
fn a_request_is_explained_route_by_route_with_the_pool_the_path_upstream_and_the_first_backend() {
    let output = route(&["GET", "http://API.example.com:8080/v1/../v1/users?page=2"]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert_eq!(field(&out, "host"), Some("api.example.com"), "port, case ignored:\n{out}");
    assert_eq!(field(&out, "path"), Some("/v1/users"), "made canonical:\n{out}");
    assert_eq!(field(&out, "query"), Some("page=2"));
    assert_eq!(field(&out, "route"), Some("api"));
    assert_eq!(field(&out, "pool"), Some("api (least_connections)"));
    assert_eq!(field(&out, "upstream"), Some("/users?page=2"), "strip_prefix applied, query kept");
    assert_eq!(field(&out, "first backend"), Some("api1 127.0.0.1:9201"));
    assert_eq!(verdict(&out, "api"), "takes it");
    assert_eq!(verdict(&out, "api-write"), "no: method");
    assert_eq!(verdict(&out, "api-canary"), "no: header 'x-canary' is absent");
    assert_eq!(verdict(&out, "blog"), "no: host");
    assert_eq!(verdict(&out, "static"), "no: path");
    // Every route listed once, most specific first: api-write (2 matchers) before api-canary
    // (1) before api (0), all before the wildcard and the host-less ones.
    let order: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("routes, in precedence order:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(order, ["blog", "api-write", "api-canary", "api", "split", "static", "admin-deny", "images"]);

    let canary = stdout(&route(&["GET", "http://api.example.com/v1/users", "-H", "X-Canary: 1"]));
    assert_eq!(field(&canary, "route"), Some("api-canary"));
    assert_eq!(verdict(&canary, "api"), "matches, but loses to the winner: more matchers (methods, headers, query)");
    assert_eq!(field(&canary, "pool"), Some("canary (round_robin)"));
    assert_eq!(field(&canary, "first backend"), Some("can1 127.0.0.1:9301"));
    let twice = stdout(&route(&["GET", "http://api.example.com/v1/x", "-H", "X-Canary: 1", "-H", "x-canary: 1"]));
    assert_eq!(field(&twice, "route"), Some("api"), "a header sent twice matches nothing:\n{twice}");

    let assets = stdout(&route(&["GET", "http://cdn.example.com/static/a.css"]));
    assert_eq!(field(&assets, "route"), Some("static"));
    assert_eq!(field(&assets, "upstream"), Some("/assets/a.css"), "replace_prefix");
    assert_eq!(field(&assets, "pool"), Some("static (ip_hash)"));
    assert_eq!(verdict(&assets, "admin-deny"), "no: path");

    let moved = stdout(&route(&["GET", "http://www.example.com/blog/2024"]));
    assert_eq!(field(&moved, "redirect"), Some("301 Location: http://blog.example.com/"));
    let denied = stdout(&route(&["DELETE", "/admin/users", "-H", "Host: x.example.com"]));
    assert_eq!(field(&denied, "route"), Some("admin-deny"));
    assert_eq!(field(&denied, "respond"), Some("403 \"no\""));

    let split = stdout(&route(&["GET", "http://shop.example.com/", "--client", "10.0.0.7"]));
    assert_eq!(field(&split, "split"), Some("default 90, canary 10 (by the client's address)"));
    assert!(["default (round_robin)", "canary (round_robin)"].contains(&field(&split, "pool").unwrap()), "{split}");

    let nothing = stdout(&route(&["GET", "/elsewhere"]));
    assert_eq!(field(&nothing, "host"), Some("(none)"));
    assert_eq!(field(&nothing, "route"), Some("none: default pool"));
    assert_eq!(field(&nothing, "first backend"), Some("web1 127.0.0.1:9101"));
    let api = stdout(&route(&["GET", "/lb/stats", "-H", "Host: api.example.com"]));
    assert!(api.contains("management API: the data port serves this path itself"), "{api}");
}

#[test]
fn a_url_the_front_end_refuses_says_why_and_exits_non_zero() {
    for (url, why) in [
        ("http://x.example.com/%2e%2e/admin", "400 '..' above the root of the path"),
        ("/a/..;/admin", "400"),
        ("http://x.example.com/a#frag", "400 '#' in the request target"),
        ("http://x.example.com/a%2Fb", "400"),
    ] {
        let output = route(&["GET", url, "-H", "Host: x.example.com"]);
        let out = stdout(&output);
        assert_eq!(output.status.code(), Some(1), "{url}: {out}");
        let refused = field(&out, "refused").unwrap_or_else(|| panic!("{url}: {out}"));
        assert!(refused.starts_with(why), "{url}: {refused}");
        assert!(field(&out, "route").is_none(), "no route is looked up: {out}");
    }
    let disagree = route(&["GET", "http://a.example.com/x", "-H", "Host: b.example.com"]);
    assert_eq!(disagree.status.code(), Some(1));
    assert!(stdout(&disagree).contains("400 the request target's authority and Host disagree"));
    let usage = route(&["GET", "example.com/x"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("must be http://HOST/PATH"));
}

#[test]
fn expect_checks_each_case_and_exits_1_on_a_miss_and_2_on_a_bad_file() {
    let passing = temp_file(
        "pass.json",
        r#"[
          {"method": "GET", "url": "http://api.example.com/v1/users", "route": "api", "pool": "api", "upstream_path": "/users"},
          {"method": "GET", "url": "http://api.example.com/v1/users", "headers": {"X-Canary": "1"}, "route": "api-canary", "pool": "canary"},
          {"method": "GET", "url": "http://api.example.com/v1/users", "headers": ["X-Canary: 1", "X-Canary: 1"], "route": "api"},
          {"method": "GET", "url": "/elsewhere", "route": null, "pool": "default", "upstream_path": "/elsewhere"},
          {"method": "GET", "url": "http://www.example.com/blog/x", "route": "blog", "status": 301},
          {"method": "GET", "url": "http://x.example.com/admin", "route": "admin-deny", "status": 403},
          {"method": "GET", "url": "/../etc/passwd", "status": 400}
        ]"#,
    );
    let output = route(&["--expect", passing.to_str().unwrap()]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("ok ")).count(), 7, "{out}");
    assert!(out.ends_with("7 case(s), 7 passed, 0 missed\n"), "{out}");

    let failing = temp_file(
        "fail.json",
        r#"[
          {"method": "GET", "url": "http://api.example.com/v1/users", "route": "api"},
          {"method": "GET", "url": "http://api.example.com/v1/users", "route": "api-canary", "upstream_path": "/v1/users", "status": 200}
        ]"#,
    );
    let output = route(&["--expect", failing.to_str().unwrap()]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ok    GET http://api.example.com/v1/users"), "{out}");
    assert_eq!(
        lines[1],
        "MISS  GET http://api.example.com/v1/users: route 'api' (expected 'api-canary'); upstream_path '/users' \
         (expected '/v1/users'); status none of lb-sync's own (a backend answers) (expected 200)"
    );
    assert_eq!(lines[2], "2 case(s), 1 passed, 1 missed");

    for (name, text, why) in [
        ("unknown.json", r#"[{"method": "GET", "url": "/x", "rout": "a"}]"#, "unknown field `rout`"),
        ("nothing.json", r#"[{"method": "GET", "url": "/x"}]"#, "case 1: checks nothing"),
        ("url.json", r#"[{"method": "GET", "url": "x", "status": 400}]"#, "case 1: URL 'x' must be"),
        ("json.json", "[{", "EOF"),
    ] {
        let file = temp_file(name, text);
        let output = route(&["--expect", file.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{name}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(why), "{name}: {stderr}");
    }
    let missing = route(&["--expect", "/nonexistent/cases.json"]);
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn check_config_prints_the_tables_warnings_and_still_passes() {
    let config = temp_file("check.json", CONFIG);
    let output = lb_sync(&["--config", config.to_str().unwrap(), "--check-config"]);
    assert_eq!(output.status.code(), Some(0), "warnings do not fail the check");
    assert!(stdout(&output).starts_with("lb-sync: configuration ok: 2 backend(s) and 4 named pool(s)"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warnings: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        warnings,
        [
            r"warning: route 'images': regex '^/img/[0-9]+\.png$' has ^ or $, but every regex is matched against the whole value already",
            "warning: pool 'old' is named by no route: no request reaches it",
        ]
    );
    let shadowed = temp_file(
        "shadowed.json",
        &CONFIG
            .replace(
                r#""port": 9501}]}"#,
                r#""port": 9501}]}, "hidden": {"backends": [{"host": "127.0.0.1", "port": 9601}]}"#,
            )
            .replace(
                r#"{"name": "images""#,
                r#"{"name": "wide", "path_prefix": "/img", "methods": ["GET", "HEAD"], "priority": 2, "pool": "old"},
               {"name": "narrow", "path_prefix": "/img", "methods": ["GET"], "pool": "hidden"},
               {"name": "images""#,
            ),
    );
    let output = lb_sync(&["--config", shadowed.to_str().unwrap(), "--check-config"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l == "warning: route 'narrow' can never match: route(s) 'wide' take every request it takes first"),
        "{stderr}"
    );
    assert!(!stderr.contains("pool 'old' is named by no route"), "{stderr}");
    // A route naming a pool that does not exist stays an error.
    let undefined = temp_file("undefined.json", &CONFIG.replace(r#""pool": "static"}"#, r#""pool": "nowhere"}"#));
    let output = lb_sync(&["--config", undefined.to_str().unwrap(), "--check-config"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("names pool 'nowhere', which is not defined"));
}

/// The two ways a prefix meant with a segment boundary goes wrong, as nginx users write them:
/// a regex `/api.*` (nginx's `location /api`, which also takes `/apiv2`) and a prefix `/docs/`
/// (nginx's `location /docs/`, whose `/docs` nginx redirects and a route does not take).
#[test]
fn check_config_says_which_prefixes_were_probably_meant_with_a_boundary() {
    let config = temp_file(
        "boundary.json",
        r#"{"backends": [{"host": "127.0.0.1", "port": 9101}],
            "pools": {"api": {"backends": [{"host": "127.0.0.1", "port": 9201}]}},
            "routes": [
              {"name": "legacy", "path_regex": "/api.*", "pool": "api"},
              {"name": "docs", "path_prefix": "/docs/", "pool": "default"},
              {"name": "assets", "path_prefix": "/assets/", "pool": "default"},
              {"name": "assets-index", "path": "/assets", "redirect": {"status": 301, "path": "/assets/"}},
              {"name": "v2", "path_regex": "/v2/.*", "pool": "api"}
            ]}"#,
    );
    let output = lb_sync(&["--config", config.to_str().unwrap(), "--check-config"]);
    assert_eq!(output.status.code(), Some(0), "warnings do not fail the check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            "warning: route 'legacy': path_regex '/api.*' also takes '/apiv2' (every path that starts with '/api'): \
             path_prefix \"/api\" takes '/api' and the paths below it only",
            "warning: route 'docs': path_prefix '/docs/' does not take '/docs' (nginx's location /docs/ redirects it \
             to '/docs/'; here another route, the default pool or a 404 gets it): path_prefix \"/docs\" takes '/docs', \
             '/docs/' and below, never '/docsv2'",
        ],
        "'assets' says what '/assets' gets; '/v2/.*' has its boundary"
    );
    // What the warnings say, the route command shows.
    let route = |url: &str| {
        let out = lb_sync(&["route", "--config", config.to_str().unwrap(), "GET", url]);
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| l.strip_prefix("route: ").map(String::from))
    };
    assert_eq!(route("http://x.example/apiv2/users").as_deref(), Some("legacy"));
    assert_eq!(route("http://x.example/docs/a").as_deref(), Some("docs"));
    assert_eq!(route("http://x.example/docs").as_deref(), Some("none: default pool"));
}

#[test]
fn a_reload_logs_the_tables_warnings_and_goes_ahead() {
    let backend: std::net::SocketAddr = format!("127.0.0.1:{}", common::unused_port()).parse().unwrap();
    let lb = common::lb::Lb::start(&[backend], "");
    let routes = r#""pools": {"api": {"backends": [{"host": "127.0.0.1", "port": 9201}]},
                              "spare": {"backends": [{"host": "127.0.0.1", "port": 9202}]}},
                    "routes": [{"name": "api", "path_regex": "/api/.*$", "pool": "api"}]"#;
    lb.write_config(&[backend], routes);
    let resp = common::api::request(lb.addr, "POST", "/lb/config/reload", "");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let limit = std::time::Duration::from_secs(10);
    assert!(lb.wait_log("WARN", limit) && lb.wait_log("pool 'spare' is named by no route", limit), "{}", lb.log());
    assert!(lb.log().contains("route 'api': regex '/api/.*$' has ^ or $"), "{}", lb.log());
}

#[test]
fn the_start_logs_the_tables_warnings() {
    let backend: std::net::SocketAddr = format!("127.0.0.1:{}", common::unused_port()).parse().unwrap();
    let routes = r#""pools": {"spare": {"backends": [{"host": "127.0.0.1", "port": 9202}]}},
                    "routes": [{"name": "all", "path_prefix": "/", "pool": "default"}]"#;
    let lb = common::lb::Lb::start(&[backend], routes);
    let limit = std::time::Duration::from_secs(10);
    assert!(lb.wait_log("pool 'spare' is named by no route", limit), "{}", lb.log());
}
