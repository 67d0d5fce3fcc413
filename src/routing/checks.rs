//! What a table that loads may still do wrong, for `--check-config` and reload to report:
//! routes that can never match, regexes anchored by hand (they are anchored already), prefixes
//! probably meant with a segment boundary, and routes that name one thing twice.

use std::fmt;

use super::conditions::HeaderTest;
use super::config::RouteConfig;
use super::host::HostPattern;
use super::path::PathMatch;
use super::rank::shadowed_by;
use super::route::Route;

/// One finding about a table that loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteWarning {
    /// Every request the route takes, a more specific or higher-priority route takes first.
    Shadowed {
        /// The route that never matches.
        route: String,
        /// The routes that always win over it.
        by: Vec<String>,
    },
    /// A regex starts with `^` or ends with `$`: redundant, every regex is anchored.
    Anchored {
        /// The route.
        route: String,
        /// The regex as written.
        regex: String,
    },
    /// A `path_regex` that is a literal prefix then `.*` or `.+` with no `/` between: `/api.*`
    /// also takes `/apiv2` (nginx's `location /api` does too), where `path_prefix` would not.
    NoBoundary {
        /// The route.
        route: String,
        /// The regex as written.
        regex: String,
        /// Its literal prefix: the `path_prefix` to write instead.
        prefix: String,
    },
    /// A `path_prefix` ending in `/`: it does not take the path without that slash (nginx
    /// answers `location /api/`'s `/api` with a 301 to `/api/`; a route does not), and no other
    /// route says what `/api` gets.
    TrailingSlash {
        /// The route.
        route: String,
        /// The prefix as written.
        prefix: String,
    },
    /// The route names the same host, method, header or field twice.
    NamedTwice {
        /// The route.
        route: String,
        /// What, as `host 'x'`, `method 'GET'`...
        what: String,
    },
}

impl fmt::Display for RouteWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteWarning::Shadowed { route, by } => {
                write!(
                    f,
                    "route '{route}' can never match: route(s) '{}' take every request it takes first",
                    by.join("', '")
                )
            }
            RouteWarning::Anchored { route, regex } => {
                write!(f, "route '{route}': regex '{regex}' has ^ or $, but every regex is matched against the whole value already")
            }
            RouteWarning::NoBoundary { route, regex, prefix } => write!(
                f,
                "route '{route}': path_regex '{regex}' also takes '{prefix}v2' (every path that starts with \
                 '{prefix}'): path_prefix \"{prefix}\" takes '{prefix}' and the paths below it only"
            ),
            RouteWarning::TrailingSlash { route, prefix } => {
                let bare = prefix.trim_end_matches('/');
                write!(
                    f,
                    "route '{route}': path_prefix '{prefix}' does not take '{bare}' (nginx's location {prefix} \
                     redirects it to '{prefix}'; here another route, the default pool or a 404 gets it): \
                     path_prefix \"{bare}\" takes '{bare}', '{prefix}' and below, never '{bare}v2'"
                )
            }
            RouteWarning::NamedTwice { route, what } => write!(f, "route '{route}' names {what} twice"),
        }
    }
}

/// The table's warnings, in the config's order.
pub(crate) fn warnings(routes: &[Route], named_twice: &[RouteWarning]) -> Vec<RouteWarning> {
    let mut found = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        if let Some(by) = shadowed_by(routes, i) {
            found.push(RouteWarning::Shadowed {
                route: route.name.clone(),
                by: by.into_iter().map(String::from).collect(),
            });
        }
        let header_regexes = route.conditions.headers.iter().filter_map(|(_, test)| match test {
            HeaderTest::Regex(source, _) => Some(source.as_str()),
            _ => None,
        });
        let path_regex = match &route.path {
            PathMatch::Regex(r) => Some(r.source.as_str()),
            _ => None,
        };
        for regex in path_regex.into_iter().chain(header_regexes) {
            if is_anchored_by_hand(regex) {
                found.push(RouteWarning::Anchored { route: route.name.clone(), regex: regex.to_string() });
            }
        }
        if let Some(prefix) = path_regex.and_then(prefix_without_boundary) {
            found.push(RouteWarning::NoBoundary {
                route: route.name.clone(),
                regex: path_regex.unwrap_or_default().to_string(),
                prefix,
            });
        }
        if let PathMatch::Prefix(prefix) = &route.path {
            if slash_ended_alone(routes, prefix) {
                found.push(RouteWarning::TrailingSlash { route: route.name.clone(), prefix: prefix.clone() });
            }
        }
        found.extend(
            named_twice
                .iter()
                .filter(|w| matches!(w, RouteWarning::NamedTwice { route: r, .. } if *r == route.name))
                .cloned(),
        );
    }
    found
}

/// Whether a regex starts with `^` or ends with an unescaped `$`.
fn is_anchored_by_hand(regex: &str) -> bool {
    let trailing_backslashes = regex.strip_suffix('$').map(|head| head.len() - head.trim_end_matches('\\').len());
    regex.starts_with('^') || trailing_backslashes.is_some_and(|n| n % 2 == 0)
}

/// The literal prefix of a path regex that is that prefix then `.*` or `.+` (a hand anchor
/// aside) and does not end in `/`; `None` for any other regex. Escaped punctuation (`\.`)
/// counts as the character; anything else with a meaning makes it not a literal.
fn prefix_without_boundary(regex: &str) -> Option<String> {
    let regex = regex.strip_prefix('^').unwrap_or(regex);
    let regex = if is_anchored_by_hand(regex) { &regex[..regex.len() - 1] } else { regex };
    let head = regex.strip_suffix(".*").or_else(|| regex.strip_suffix(".+"))?;
    let mut literal = String::new();
    let mut chars = head.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped) if escaped.is_ascii_punctuation() => literal.push(escaped),
                _ => return None,
            },
            c if r".+*?()|[]{}^$#".contains(c) || c.is_whitespace() => return None,
            c => literal.push(c),
        }
    }
    (literal.starts_with('/') && literal.len() > 1 && !literal.ends_with('/')).then_some(literal)
}

/// Whether `prefix` ends in `/` (and is not `/`) while no route says what the path without
/// the slash gets (a `path` or `path_prefix` of exactly that path).
fn slash_ended_alone(routes: &[Route], prefix: &str) -> bool {
    let bare = prefix.trim_end_matches('/');
    if bare.is_empty() || bare.len() == prefix.len() {
        return false;
    }
    !routes.iter().any(|r| matches!(&r.path, PathMatch::Exact(p) | PathMatch::Prefix(p) if p == bare))
}

/// Routes that list a host (as compared), a method, a header name (case aside) or an edited
/// field twice.
pub(crate) fn named_twice(configs: &[RouteConfig]) -> Vec<RouteWarning> {
    let mut found = Vec::new();
    for config in configs {
        let mut push = |what: String| found.push(RouteWarning::NamedTwice { route: config.name.clone(), what });
        let hosts: Vec<HostPattern> = config.host.iter().filter_map(|h| HostPattern::parse(h).ok()).collect();
        for (i, host) in hosts.iter().enumerate() {
            if hosts[..i].contains(host) {
                push(format!("host '{host}'"));
            }
        }
        for (i, method) in config.methods.iter().enumerate() {
            if config.methods[..i].contains(method) {
                push(format!("method '{method}'"));
            }
        }
        let headers: Vec<&String> = config.headers.keys().collect();
        for (i, name) in headers.iter().enumerate() {
            if headers[..i].iter().any(|h| h.eq_ignore_ascii_case(name)) {
                push(format!("header '{name}'"));
            }
        }
        for (key, edits) in
            [("request_headers", &config.request_headers), ("response_headers", &config.response_headers)]
        {
            let Some(edits) = edits else { continue };
            let names: Vec<&String> = edits.set.keys().chain(edits.add.keys()).chain(edits.remove.iter()).collect();
            for (i, name) in names.iter().enumerate() {
                if names[..i].iter().any(|n| n.eq_ignore_ascii_case(name)) {
                    push(format!("'{name}' in {key}"));
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_anchors_are_found() {
        assert!(is_anchored_by_hand("^/a"));
        assert!(is_anchored_by_hand("/a$"));
        assert!(is_anchored_by_hand(r"/a\\$"));
        assert!(!is_anchored_by_hand(r"/a\$"));
        assert!(!is_anchored_by_hand("/a[$]x"));
    }

    fn said(routes: &str) -> Vec<String> {
        let configs: Vec<RouteConfig> = serde_json::from_str(routes).unwrap();
        super::super::RouteTable::build(&configs).unwrap().warnings().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn prefixes_probably_meant_with_a_boundary_are_reported_with_the_prefix_to_write() {
        assert_eq!(
            said(
                r#"[{"name": "legacy", "path_regex": "/api.*", "pool": "p"},
                    {"name": "docs", "path_prefix": "/docs/", "pool": "p"},
                    {"name": "root", "path_prefix": "/", "pool": "p"}]"#
            ),
            [
                "route 'legacy': path_regex '/api.*' also takes '/apiv2' (every path that starts with '/api'): \
                 path_prefix \"/api\" takes '/api' and the paths below it only",
                "route 'docs': path_prefix '/docs/' does not take '/docs' (nginx's location /docs/ redirects it \
                 to '/docs/'; here another route, the default pool or a 404 gets it): path_prefix \"/docs\" \
                 takes '/docs', '/docs/' and below, never '/docsv2'",
            ]
        );
        // Said once each: a hand anchor is its own warning.
        assert_eq!(said(r#"[{"name": "r", "path_regex": "^/api.+", "pool": "p"}]"#).len(), 2);
        // What the path without the slash gets is written down: a deliberate split.
        for other in [r#""path": "/docs""#, r#""path_prefix": "/docs""#] {
            let routes = format!(
                r#"[{{"name": "docs", "path_prefix": "/docs/", "pool": "p"}}, {{"name": "bare", {other}, "pool": "q"}}]"#
            );
            assert_eq!(said(&routes), Vec::<String>::new(), "{routes}");
        }
        // A boundary written, or a prefix that is a pattern: nothing to say.
        assert!(said(r#"[{"name": "a", "path_regex": "/api/.*", "pool": "p"}, {"name": "b", "path_prefix": "/api", "pool": "p"}, {"name": "c", "path_regex": "/v[0-9]+.*", "pool": "p"}]"#).is_empty());
    }

    #[test]
    fn a_literal_then_any_without_a_slash_is_a_prefix_without_boundary() {
        for (regex, prefix) in
            [("/api.*", "/api"), ("/api.+", "/api"), ("^/api.*$", "/api"), (r"/v1\.0.*", "/v1.0"), ("/a/b.*", "/a/b")]
        {
            assert_eq!(prefix_without_boundary(regex).as_deref(), Some(prefix), "{regex}");
        }
        // A boundary written, a pattern in the prefix, nothing after it, or only a slash.
        for regex in
            ["/api/.*", "/api(/.*)?", "/v[0-9]+.*", "(?i)/api.*", "/api", "/.*", "/a.b.*", r"/a\d.*", "/a|/b.*"]
        {
            assert_eq!(prefix_without_boundary(regex), None, "{regex}");
        }
    }
}
