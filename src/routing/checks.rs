//! What a table that loads may still do wrong, for `--check-config` and reload to report:
//! routes that can never match, regexes anchored by hand (they are anchored already), and
//! routes that name one thing twice.

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
}
