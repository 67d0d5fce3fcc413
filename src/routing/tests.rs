//! The table as a whole: every precedence rule, every tie refusal and the disjointness that
//! allows one, the warnings, and a property test that the filed lookup agrees with evaluating
//! every route in rank order.

use proptest::prelude::*;

use super::*;
use crate::server::Header;

fn table(json: &str) -> Result<RouteTable, String> {
    let routes: Vec<RouteConfig> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    RouteTable::build(&routes).map_err(|e| e.to_string())
}

fn winner<'t>(table: &'t RouteTable, method: &str, host: Option<&str>, path: &str) -> Option<&'t str> {
    winner_with(table, method, host, path, "", &[])
}

fn winner_with<'t>(
    table: &'t RouteTable,
    method: &str,
    host: Option<&str>,
    path: &str,
    query: &str,
    headers: &[Header],
) -> Option<&'t str> {
    let view = RequestView { method, host, path, query, headers };
    table.lookup(&view).map(|r| r.name.as_str())
}

/// The same routes in file order and reversed give the same winners.
fn both_orders(routes: &[&str]) -> [RouteTable; 2] {
    let forward = format!("[{}]", routes.join(","));
    let mut reversed = routes.to_vec();
    reversed.reverse();
    let backward = format!("[{}]", reversed.join(","));
    [table(&forward).unwrap(), table(&backward).unwrap()]
}

#[test]
fn an_exact_host_beats_a_wildcard_which_beats_no_host_whatever_the_path() {
    for t in both_orders(&[
        r#"{"name": "exact", "host": "a.example.com", "pool": "p"}"#,
        r#"{"name": "wild", "host": "*.example.com", "path": "/x", "pool": "p"}"#,
        r#"{"name": "none", "path": "/x", "methods": ["GET"], "pool": "p"}"#,
    ]) {
        assert_eq!(winner(&t, "GET", Some("a.example.com"), "/x"), Some("exact"));
        assert_eq!(winner(&t, "GET", Some("b.example.com"), "/x"), Some("wild"));
        assert_eq!(winner(&t, "GET", Some("b.example.com"), "/y"), None);
        assert_eq!(winner(&t, "GET", Some("example.org"), "/x"), Some("none"));
        assert_eq!(winner(&t, "GET", None, "/x"), Some("none"));
    }
}

#[test]
fn the_longest_wildcard_wins_at_any_depth() {
    for t in both_orders(&[
        r#"{"name": "short", "host": "*.example.com", "pool": "p"}"#,
        r#"{"name": "long", "host": "*.eu.example.com", "pool": "p"}"#,
    ]) {
        assert_eq!(winner(&t, "GET", Some("x.eu.example.com"), "/"), Some("long"));
        assert_eq!(winner(&t, "GET", Some("y.x.eu.example.com"), "/"), Some("long"));
        assert_eq!(winner(&t, "GET", Some("eu.example.com"), "/"), Some("short"));
        assert_eq!(winner(&t, "GET", Some("x.us.example.com"), "/"), Some("short"));
        assert_eq!(winner(&t, "GET", Some("example.com"), "/"), None);
    }
}

#[test]
fn a_more_specific_host_group_without_a_matching_path_falls_back_to_a_less_specific_one() {
    let t = table(
        r#"[{"name": "api", "host": "a.example.com", "path_prefix": "/api", "pool": "p"},
            {"name": "rest", "host": "*.example.com", "pool": "p"}]"#,
    )
    .unwrap();
    assert_eq!(winner(&t, "GET", Some("a.example.com"), "/api/x"), Some("api"));
    assert_eq!(winner(&t, "GET", Some("a.example.com"), "/other"), Some("rest"));
}

#[test]
fn an_exact_path_beats_the_longest_prefix_which_beats_a_regex_which_beats_no_path() {
    for t in both_orders(&[
        r#"{"name": "exact", "path": "/api/users", "pool": "p"}"#,
        r#"{"name": "long", "path_prefix": "/api/users/", "pool": "p"}"#,
        r#"{"name": "short", "path_prefix": "/api", "pool": "p"}"#,
        r#"{"name": "regex", "path_regex": "/api/[a-z]+/[0-9]+", "methods": ["GET"], "headers": {"x": true}, "pool": "p"}"#,
        r#"{"name": "none", "methods": ["GET"], "query": {"a": true}, "headers": {"x": true}, "pool": "p"}"#,
    ]) {
        let x = [Header::new("X", "1")];
        let at = |path, query| winner_with(&t, "GET", None, path, query, &x);
        assert_eq!(at("/api/users", "a"), Some("exact"));
        assert_eq!(at("/api/users/7", "a"), Some("long"), "the longer prefix, not the regex");
        assert_eq!(at("/api/users/", "a"), Some("long"));
        assert_eq!(at("/api/items/7", "a"), Some("short"), "a prefix beats a regex with more matchers");
        assert_eq!(at("/api", ""), Some("short"));
        assert_eq!(at("/apiv2", "a"), Some("none"), "a prefix ends on a segment boundary");
        assert_eq!(at("/other", ""), None);
    }
    let t = table(
        r#"[{"name": "regex", "path_regex": "/v[0-9]+/.*", "pool": "p"},
            {"name": "none", "methods": ["GET"], "pool": "p"}]"#,
    )
    .unwrap();
    assert_eq!(winner(&t, "GET", None, "/v2/x"), Some("regex"));
    assert_eq!(winner(&t, "GET", None, "/x/v2/x"), Some("none"), "the regex is anchored");
}

#[test]
fn more_matchers_beat_fewer_then_priority_breaks_what_is_left() {
    for t in both_orders(&[
        r#"{"name": "plain", "path_prefix": "/api", "pool": "p"}"#,
        r#"{"name": "get", "path_prefix": "/api", "methods": ["GET"], "pool": "p"}"#,
        r#"{"name": "canary", "path_prefix": "/api", "methods": ["GET"], "headers": {"x-canary": "1"}, "pool": "p"}"#,
        r#"{"name": "debug", "path_prefix": "/api", "query": {"debug": true}, "priority": 5, "pool": "p"}"#,
    ]) {
        assert_eq!(winner(&t, "POST", None, "/api/x"), Some("plain"));
        assert_eq!(winner(&t, "GET", None, "/api/x"), Some("get"));
        let canary = [Header::new("X-Canary", "1")];
        assert_eq!(winner_with(&t, "GET", None, "/api/x", "", &canary), Some("canary"));
        assert_eq!(winner_with(&t, "GET", None, "/api/x", "debug", &[]), Some("debug"), "priority breaks get vs debug");
        assert_eq!(winner_with(&t, "POST", None, "/api/x", "debug", &[]), Some("debug"));
        assert_eq!(winner_with(&t, "GET", None, "/api/x", "debug", &canary), Some("canary"), "2 matchers beat 1");
    }
}

#[test]
fn priority_never_beats_specificity() {
    let t = table(
        r#"[{"name": "broad", "path_prefix": "/", "priority": 1000, "pool": "p"},
            {"name": "narrow", "path_prefix": "/api", "pool": "p"}]"#,
    )
    .unwrap();
    assert_eq!(winner(&t, "GET", None, "/api/x"), Some("narrow"));
    assert_eq!(winner(&t, "GET", None, "/x"), Some("broad"));
}

#[test]
fn a_request_host_must_be_canonical_and_hosts_compare_as_configured() {
    let t = table(r#"[{"name": "a", "host": ["API.Example.com.", "api.example.com"], "pool": "p"}]"#).unwrap();
    for raw in ["api.example.com", "API.EXAMPLE.COM:8080", "api.example.com."] {
        let host = canonical_host(raw);
        assert_eq!(winner(&t, "GET", Some(&host), "/"), Some("a"), "{raw}");
    }
    assert_eq!(winner(&t, "GET", None, "/"), None, "a host route needs a host");
}

#[test]
fn the_readme_example_does_what_the_readme_says() {
    let readme = include_str!("../../README.md");
    let section = readme.split("## Routes\n").nth(1).unwrap();
    let example = section.split("```json\n").nth(1).unwrap().split("```").next().unwrap();
    let t = table(example.trim().trim_start_matches("\"routes\": ")).unwrap();
    let api = "api.example.com";
    assert_eq!(winner(&t, "GET", Some(api), "/v1/users"), Some("api"));
    let rewrite = t.routes().iter().find(|r| r.name == "api").unwrap().rewrite.clone().unwrap();
    assert_eq!(rewrite.apply("/v1/users"), "/users");
    let canary = [Header::new("X-Canary", "1")];
    assert_eq!(winner_with(&t, "GET", Some(api), "/v1/users", "", &canary), Some("api-canary"));
    assert_eq!(winner(&t, "GET", Some("www.example.com"), "/blog/x"), Some("old-site"));
    assert_eq!(winner(&t, "GET", Some(api), "/admin/x"), Some("admin-deny"));
    assert_eq!(winner(&t, "GET", Some(api), "/other"), None);
    assert!(t.warnings().is_empty());
}

fn refused(json: &str) -> String {
    table(json).err().unwrap_or_else(|| panic!("accepted: {json}"))
}

#[test]
fn two_routes_that_tie_and_can_meet_are_refused_with_both_names_and_the_fix() {
    let same_path =
        refused(r#"[{"name": "one", "path": "/x", "pool": "p"}, {"name": "two", "path": "/x", "pool": "q"}]"#);
    assert!(same_path.contains("'one' and 'two'") && same_path.contains("priority"), "{same_path}");
    assert!(same_path.contains("a matcher that tells them apart"));
    let ties = [
        // No matcher at all, twice.
        r#"[{"name": "a", "pool": "p"}, {"name": "b", "pool": "p"}]"#,
        // One host shared through a list.
        r#"[{"name": "a", "host": ["x.com", "y.com"], "pool": "p"}, {"name": "b", "host": "y.com", "pool": "p"}]"#,
        // The same wildcard.
        r#"[{"name": "a", "host": "*.x.com", "path_prefix": "/p", "pool": "p"}, {"name": "b", "host": "*.X.com", "path_prefix": "/p", "pool": "p"}]"#,
        // Overlapping method lists.
        r#"[{"name": "a", "path": "/x", "methods": ["GET", "POST"], "pool": "p"}, {"name": "b", "path": "/x", "methods": ["POST"], "pool": "p"}]"#,
        // One header, present vs a value.
        r#"[{"name": "a", "path": "/x", "headers": {"x-v": true}, "pool": "p"}, {"name": "b", "path": "/x", "headers": {"X-V": "1"}, "pool": "p"}]"#,
        // Different headers can both be sent.
        r#"[{"name": "a", "path": "/x", "headers": {"x-a": "1"}, "pool": "p"}, {"name": "b", "path": "/x", "headers": {"x-b": "1"}, "pool": "p"}]"#,
        // Two regexes that may meet.
        r#"[{"name": "a", "path_regex": "/a/.*", "pool": "p"}, {"name": "b", "path_regex": "/a/[0-9]+", "pool": "p"}]"#,
        // A query value vs presence.
        r#"[{"name": "a", "query": {"v": "1"}, "pool": "p"}, {"name": "b", "query": {"v": true}, "pool": "p"}]"#,
        // The same explicit priority.
        r#"[{"name": "a", "path": "/x", "priority": 3, "pool": "p"}, {"name": "b", "path": "/x", "priority": 3, "pool": "p"}]"#,
    ];
    for json in ties {
        let error = refused(json);
        assert!(error.contains("'a' and 'b'"), "{json}: {error}");
    }
}

#[test]
fn routes_that_tie_but_provably_never_meet_are_accepted() {
    let disjoint = [
        r#"[{"name": "a", "host": "x.com", "pool": "p"}, {"name": "b", "host": "y.com", "pool": "p"}]"#,
        r#"[{"name": "a", "path": "/x", "pool": "p"}, {"name": "b", "path": "/y", "pool": "p"}]"#,
        r#"[{"name": "a", "path_prefix": "/x", "pool": "p"}, {"name": "b", "path_prefix": "/y", "pool": "p"}]"#,
        r#"[{"name": "a", "path": "/x", "methods": ["GET", "HEAD"], "pool": "p"}, {"name": "b", "path": "/x", "methods": ["POST"], "pool": "p"}]"#,
        r#"[{"name": "a", "path": "/x", "headers": {"x-v": "1"}, "pool": "p"}, {"name": "b", "path": "/x", "headers": {"X-V": "2"}, "pool": "p"}]"#,
        r#"[{"name": "a", "path": "/x", "headers": {"x-v": "1"}, "pool": "p"}, {"name": "b", "path": "/x", "headers": {"x-v": {"regex": "[2-9]"}}, "pool": "p"}]"#,
        r#"[{"name": "a", "query": {"v": "1"}, "pool": "p"}, {"name": "b", "query": {"v": "2"}, "pool": "p"}]"#,
        r#"[{"name": "a", "path_regex": "/a/.*", "pool": "p"}, {"name": "b", "path_regex": "/b/.*", "pool": "p"}]"#,
        r#"[{"name": "a", "path": "/x", "priority": 1, "pool": "p"}, {"name": "b", "path": "/x", "pool": "p"}]"#,
        // Not equally specific: never a tie.
        r#"[{"name": "a", "path_prefix": "/x", "pool": "p"}, {"name": "b", "path_prefix": "/x/", "pool": "p"}]"#,
        r#"[{"name": "a", "host": "a.x.com", "pool": "p"}, {"name": "b", "host": "*.x.com", "pool": "p"}]"#,
        r#"[{"name": "a", "path": "/x", "methods": ["GET"], "pool": "p"}, {"name": "b", "path": "/x", "pool": "p"}]"#,
    ];
    for json in disjoint {
        assert!(table(json).is_ok(), "{json}: {:?}", table(json).err());
    }
}

#[test]
fn a_route_is_refused_with_its_name_and_why() {
    let cases = [
        (r#"[{"name": "a b", "pool": "p"}]"#, "route 'a b': a route name is"),
        (r#"[{"name": "a", "pool": "p"}, {"name": "a", "path": "/x", "pool": "p"}]"#, "route name 'a' is used twice"),
        (r#"[{"name": "a"}]"#, "route 'a': needs exactly one of pool, split, redirect, respond"),
        (r#"[{"name": "a", "pool": "p", "respond": {"status": 403}}]"#, "route 'a': needs exactly one of"),
        (r#"[{"name": "a", "path": "/x", "path_prefix": "/y", "pool": "p"}]"#, "route 'a': takes at most one of path"),
        (r#"[{"name": "a", "path_prefix": "api", "pool": "p"}]"#, "route 'a': path_prefix 'api' must start with '/'"),
        (r#"[{"name": "a", "path_regex": "(", "pool": "p"}]"#, "route 'a': regex '(' does not compile"),
        (r#"[{"name": "a", "host": "x.com:80", "pool": "p"}]"#, "route 'a': host 'x.com:80': leave the port out"),
        (r#"[{"name": "a", "methods": ["GE T"], "pool": "p"}]"#, "route 'a': method 'GE T' is not a method name"),
        (r#"[{"name": "a", "strip_prefix": "/x", "pool": "p"}]"#, "route 'a': strip_prefix '/x' must be a path_prefix"),
        (
            r#"[{"name": "a", "path_prefix": "/x", "strip_prefix": "/x", "respond": {"status": 200}}]"#,
            "route 'a': a path rewrite goes with pool or split only",
        ),
        (r#"[{"name": "a", "redirect": {"status": 302}}]"#, "route 'a': redirect names no scheme"),
        (r#"[{"name": "a", "split": [{"pool": "x", "weight": 0}]}]"#, "route 'a': split: every weight is 0"),
    ];
    for (json, start) in cases {
        let error = refused(json);
        assert!(error.starts_with(start), "{json}: {error}");
    }
}

#[test]
fn pools_named_lists_each_pool_once() {
    let t = table(
        r#"[{"name": "a", "path": "/a", "pool": "api"},
            {"name": "b", "path": "/b", "split": [{"pool": "web", "weight": 95}, {"pool": "canary", "weight": 5}]},
            {"name": "c", "path": "/c", "pool": "api"},
            {"name": "d", "path": "/d", "respond": {"status": 403, "body": "no"}}]"#,
    )
    .unwrap();
    assert_eq!(t.pools_named(), ["api", "canary", "web"]);
}

#[test]
fn explain_says_which_matcher_failed_first_and_why_a_match_lost() {
    let t = table(
        r#"[{"name": "canary", "host": "api.example.com", "path_prefix": "/v1", "headers": {"x-canary": "1"}, "pool": "p"},
            {"name": "api", "host": "api.example.com", "path_prefix": "/v1", "pool": "p"},
            {"name": "wild", "host": "*.example.com", "pool": "p"},
            {"name": "www", "host": "www.example.com", "pool": "p"},
            {"name": "posts", "path": "/v1/users", "methods": ["POST"], "query": {"v": "2"}, "pool": "p"},
            {"name": "regex", "path_regex": "/v1/.*", "pool": "p"}]"#,
    )
    .unwrap();
    let said = |method, headers: &[Header], query| {
        let view = RequestView { method, host: Some("api.example.com"), path: "/v1/users", query, headers };
        t.explain(&view).iter().map(|e| format!("{}: {}", t.routes()[e.route].name, e.verdict)).collect::<Vec<_>>()
    };
    assert_eq!(
        said("GET", &[], ""),
        [
            "canary: no: header 'x-canary' is absent",
            "api: takes it",
            "www: no: host",
            "wild: matches, but loses to the winner: an exact host",
            "posts: no: method",
            "regex: matches, but loses to the winner: an exact host",
        ]
    );
    let twice = [Header::new("X-Canary", "1"), Header::new("X-Canary", "1")];
    assert_eq!(
        said("GET", &twice, "")[0],
        "canary: no: header 'x-canary' is given more than once or is unreadable (never matches)"
    );
    assert_eq!(said("GET", &[Header::new("X-Canary", "2")], "")[0], "canary: no: header 'x-canary' has another value");
    assert_eq!(said("POST", &[], "v=1")[4], "posts: no: query parameter 'v' has another value");
    assert_eq!(
        said("POST", &[], "v=2&v=2")[4],
        "posts: no: query parameter 'v' is given more than once or is unreadable (never matches)"
    );
    assert_eq!(said("POST", &[], "")[4], "posts: no: query parameter 'v' is absent");
    let other = RequestView { method: "GET", host: Some("x.example.com"), path: "/v1/x", query: "", headers: &[] };
    let lines: Vec<String> =
        t.explain(&other).iter().map(|e| format!("{}: {}", t.routes()[e.route].name, e.verdict)).collect();
    assert_eq!(lines[0], "canary: no: host");
    assert!(lines.contains(&"wild: takes it".to_string()));
    assert!(lines.contains(&"regex: matches, but loses to the winner: a host".to_string()));
}

#[test]
fn a_route_always_beaten_by_one_that_takes_all_it_takes_is_reported() {
    let t = table(
        r#"[{"name": "wide", "path_prefix": "/api", "methods": ["GET", "POST"], "priority": 5, "pool": "p"},
            {"name": "hidden", "path_prefix": "/api", "methods": ["GET"], "pool": "p"},
            {"name": "seen", "path_prefix": "/api", "methods": ["DELETE"], "pool": "p"},
            {"name": "two", "host": ["a.com", "b.com"], "path": "/x", "pool": "p"},
            {"name": "a", "host": "a.com", "path": "/x", "priority": 1, "pool": "p"},
            {"name": "b", "host": "b.com", "path": "/x", "priority": 1, "pool": "p"}]"#,
    )
    .unwrap();
    let shadowed: Vec<String> = t
        .warnings()
        .into_iter()
        .filter_map(|w| match w {
            RouteWarning::Shadowed { route, by } => Some(format!("{route} by {}", by.join("+"))),
            _ => None,
        })
        .collect();
    assert_eq!(shadowed, ["hidden by wide", "two by a+b"]);
    assert_eq!(winner(&t, "GET", None, "/api/x"), Some("wide"));
}

#[test]
fn hand_anchored_regexes_and_things_named_twice_are_reported() {
    let t = table(
        r#"[{"name": "r", "path_regex": "^/a/.*$", "headers": {"x-v": {"regex": "^1"}}, "pool": "p"},
            {"name": "d", "host": ["a.com", "A.com."], "methods": ["GET", "GET"], "path": "/d",
             "headers": {"X-A": "1", "x-a": "1"}, "request_headers": {"set": {"X-B": "1"}, "remove": ["x-b"]}, "pool": "p"}]"#,
    )
    .unwrap();
    let said: Vec<String> = t.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(
        said,
        [
            "route 'r': regex '^/a/.*$' has ^ or $, but every regex is matched against the whole value already",
            "route 'r': regex '^1' has ^ or $, but every regex is matched against the whole value already",
            "route 'd' names host 'a.com' twice",
            "route 'd' names method 'GET' twice",
            "route 'd' names header 'x-a' twice",
            "route 'd' names 'x-b' in request_headers twice",
        ]
    );
    assert!(table(r#"[{"name": "ok", "path_regex": "/a/.*", "pool": "p"}]"#).unwrap().warnings().is_empty());
}

// The property: for any table that builds, the filed lookup finds the route that evaluating
// every route in rank order finds, and that route is the only one at its rank.

const HOSTS: [&[&str]; 6] = [
    &[],
    &["a.example.com"],
    &["b.example.com"],
    &["*.example.com"],
    &["*.a.example.com"],
    &["a.example.com", "*.b.example.com"],
];
const PATHS: [(&str, &str); 13] = [
    ("", ""),
    ("path", "/"),
    ("path", "/api"),
    ("path", "/api/x"),
    ("path_prefix", "/"),
    ("path_prefix", "/api"),
    ("path_prefix", "/api/"),
    ("path_prefix", "/api/x"),
    ("path_prefix", "/static"),
    ("path_regex", "/api/[a-z]+"),
    ("path_regex", "/static/.*"),
    ("path_regex", "/a.*"),
    ("path_regex", "/api/x.*"),
];
const METHODS: [&[&str]; 4] = [&[], &["GET"], &["POST"], &["GET", "POST"]];
const HEADERS: [&str; 4] = ["", r#""x-env": "a""#, r#""x-env": "b""#, r#""x-env": true"#];
const QUERIES: [&str; 4] = ["", r#""v": "1""#, r#""v": "2""#, r#""debug": true"#];

const REQUEST_HOSTS: [Option<&str>; 6] = [
    None,
    Some("a.example.com"),
    Some("b.example.com"),
    Some("x.a.example.com"),
    Some("example.com"),
    Some("c.b.example.com"),
];
const REQUEST_PATHS: [&str; 10] =
    ["/", "/api", "/api/", "/api/x", "/api/x/y", "/apiv2", "/static/a.css", "/a", "/api/xy", "/static"];
const REQUEST_QUERIES: [&str; 5] = ["", "v=1", "v=2", "debug", "v=1&v=1"];

fn route_json(i: usize, spec: &(usize, usize, usize, usize, usize, i32)) -> String {
    let (host, path, methods, header, query, priority) = *spec;
    let mut fields = vec![format!(r#""name": "r{i}""#), r#""pool": "p""#.to_string()];
    if !HOSTS[host].is_empty() {
        fields.push(format!(r#""host": {}"#, serde_json::to_string(HOSTS[host]).unwrap()));
    }
    let (key, value) = PATHS[path];
    if !key.is_empty() {
        fields.push(format!(r#""{key}": "{value}""#));
    }
    if !METHODS[methods].is_empty() {
        fields.push(format!(r#""methods": {}"#, serde_json::to_string(METHODS[methods]).unwrap()));
    }
    if !HEADERS[header].is_empty() {
        fields.push(format!(r#""headers": {{{}}}"#, HEADERS[header]));
    }
    if !QUERIES[query].is_empty() {
        fields.push(format!(r#""query": {{{}}}"#, QUERIES[query]));
    }
    if priority != 0 {
        fields.push(format!(r#""priority": {priority}"#));
    }
    format!("{{{}}}", fields.join(", "))
}

/// Builds the table, dropping the second route of each tie until it loads.
fn build_dropping_ties(mut routes: Vec<RouteConfig>) -> RouteTable {
    loop {
        match RouteTable::build(&routes) {
            Ok(table) => return table,
            Err(RouteError::Tie { second, .. }) => routes.retain(|r| r.name != second),
            Err(other) => panic!("{other}"),
        }
    }
}

/// Every route evaluated, the best rank kept; `Err` when two share the best rank.
fn naive<'t>(table: &'t RouteTable, request: &RequestView<'_>) -> Result<Option<&'t str>, String> {
    let mut best: Option<(Rank, &Route)> = None;
    let mut tied = None;
    for route in table.routes().iter().filter(|r| r.matches(request)) {
        let rank = rank::host_entries(route)
            .into_iter()
            .filter(|h| h.is_none_or(|p| request.host.is_some_and(|host| p.matches(host))))
            .map(|h| Rank::of(route, h))
            .max()
            .unwrap();
        match &best {
            Some((b, _)) if *b > rank => {}
            Some((b, other)) if *b == rank => tied = Some(format!("{} and {} at {rank:?}", other.name, route.name)),
            _ => {
                best = Some((rank, route));
                tied = None;
            }
        }
    }
    match tied {
        Some(tie) => Err(tie),
        None => Ok(best.map(|(_, r)| r.name.as_str())),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_filed_lookup_finds_what_evaluating_every_route_in_rank_order_finds(
        specs in prop::collection::vec((0..HOSTS.len(), 0..PATHS.len(), 0..METHODS.len(), 0..HEADERS.len(), 0..QUERIES.len(), 0..4i32), 1..14),
        requests in prop::collection::vec((0..2usize, 0..REQUEST_HOSTS.len(), 0..REQUEST_PATHS.len(), 0..4usize, 0..REQUEST_QUERIES.len()), 1..24),
    ) {
        let routes: Vec<RouteConfig> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| serde_json::from_str(&route_json(i, spec)).unwrap())
            .collect();
        let table = build_dropping_ties(routes);
        for (method, host, path, header, query) in requests {
            let headers: Vec<Header> = match header {
                0 => vec![],
                1 => vec![Header::new("X-Env", "a")],
                2 => vec![Header::new("x-env", "b")],
                _ => vec![Header::new("X-Env", "a"), Header::new("X-Env", "a")],
            };
            let view = RequestView {
                method: ["GET", "POST"][method],
                host: REQUEST_HOSTS[host],
                path: REQUEST_PATHS[path],
                query: REQUEST_QUERIES[query],
                headers: &headers,
            };
            let expected = naive(&table, &view);
            prop_assert!(expected.is_ok(), "a table that loaded has a tie: {:?} for {view:?}", expected);
            let found = table.lookup(&view).map(|r| r.name.as_str());
            prop_assert_eq!(found, expected.unwrap(), "{:?}", view);
            // explain agrees: its one winner is lookup's, every route is listed once, each
            // route that matches and is not the winner is outranked by it, and the order is
            // the ranks'.
            let explained = table.explain(&view);
            prop_assert_eq!(explained.len(), table.routes().len());
            let winners: Vec<&str> = explained
                .iter()
                .filter(|e| e.verdict == Verdict::Wins)
                .map(|e| table.routes()[e.route].name.as_str())
                .collect();
            prop_assert_eq!(winners.first().copied(), found, "{:?}", view);
            prop_assert!(winners.len() <= 1);
            for e in &explained {
                let route = &table.routes()[e.route];
                prop_assert_eq!(matches!(e.verdict, Verdict::Fails(_)), !route.matches(&view), "{}", route.name);
            }
            prop_assert!(explained.windows(2).all(|w| w[0].rank >= w[1].rank));
        }
    }
}
