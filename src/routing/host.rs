//! Host matching: a route's `host` patterns (exact names and `*.suffix` wildcards) and the
//! request's `Host` made comparable with them (lowercase, no port, no trailing dot).
//!
//! Names are compared as ASCII: an IDN is written as its A-label (`xn--...`), as it arrives in
//! `Host`. A route naming a U-label (`bücher.example`) is refused with the A-label to write
//! instead, so that no table silently fails to match the name its author meant (converting it
//! would need Unicode's IDNA mapping tables, a dozen crates, for a value written once).

use std::borrow::Cow;

use super::punycode;

/// One `host` pattern of a route.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// One name, lowercase, without a trailing dot (`api.example.com`, `10.0.0.1`, `[::1]`).
    Exact(String),
    /// `*.example.com`: the suffix after `*.` (`example.com`); one or more labels before it.
    Wildcard(String),
}

impl HostPattern {
    /// Reads a pattern as written in the config: case and one trailing dot do not matter; a
    /// port, an empty label, a bare `*` or a `*` anywhere but first are refused.
    ///
    /// ```
    /// use lb_sync::routing::HostPattern;
    /// assert_eq!(HostPattern::parse("API.Example.com.").unwrap(), HostPattern::Exact("api.example.com".into()));
    /// assert_eq!(HostPattern::parse("*.example.com").unwrap(), HostPattern::Wildcard("example.com".into()));
    /// assert!(HostPattern::parse("example.com:8080").is_err());
    /// assert!(HostPattern::parse("bücher.example").unwrap_err().contains("xn--bcher-kva.example"));
    /// ```
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        if !text.is_ascii() {
            let a_label = text
                .trim_end_matches('.')
                .split('.')
                .map(|label| punycode::a_label(label).unwrap_or_else(|| label.to_string()))
                .collect::<Vec<_>>()
                .join(".");
            return Err(format!("host '{text}' is not ASCII: write its A-label '{a_label}' (IDNs arrive as A-labels)"));
        }
        let lower = text.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        if name.starts_with('[') {
            let valid = name.ends_with(']') && name[1..name.len() - 1].parse::<std::net::Ipv6Addr>().is_ok();
            return if valid {
                Ok(HostPattern::Exact(name.to_string()))
            } else {
                Err(format!("host '{text}' is not an IPv6 literal"))
            };
        }
        if name.contains(':') {
            return Err(format!("host '{text}': leave the port out (a request's port is ignored)"));
        }
        let (wildcard, rest) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, name),
        };
        let label_ok = |l: &str| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if rest.is_empty() || !rest.split('.').all(label_ok) {
            let why = if name == "*" {
                ": leave host out to match any host"
            } else {
                ": expected NAME or *.NAME, labels of a-z 0-9 - _"
            };
            return Err(format!("host '{text}' is not a host name{why}"));
        }
        Ok(if wildcard { HostPattern::Wildcard(rest.to_string()) } else { HostPattern::Exact(rest.to_string()) })
    }

    /// Whether a canonical request host (see [`canonical_host`]) matches.
    ///
    /// ```
    /// use lb_sync::routing::HostPattern;
    /// let wild = HostPattern::parse("*.example.com").unwrap();
    /// assert!(wild.matches("a.example.com") && wild.matches("a.b.example.com"));
    /// assert!(!wild.matches("example.com") && !wild.matches("aexample.com"));
    /// ```
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::Wildcard(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
        }
    }

    /// Labels in a wildcard's suffix (how specific it is); 0 for an exact name.
    pub fn suffix_labels(&self) -> usize {
        match self {
            HostPattern::Exact(_) => 0,
            HostPattern::Wildcard(suffix) => suffix.split('.').count(),
        }
    }

    /// Whether every host this pattern matches, `other` matches too.
    pub(crate) fn within(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Exact(name), _) => other.matches(name),
            (HostPattern::Wildcard(inner), HostPattern::Wildcard(outer)) => {
                inner == outer || HostPattern::Wildcard(outer.clone()).matches(inner)
            }
            (HostPattern::Wildcard(_), HostPattern::Exact(_)) => false,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// A request's `Host` as routes compare it: ASCII lowercase, without `:port`, without one
/// trailing dot. Refuses nothing: the front end has already checked that it is an authority.
/// Borrowed when it is already canonical (the usual case).
///
/// ```
/// use lb_sync::routing::canonical_host;
/// assert_eq!(canonical_host("API.example.com.:8080"), "api.example.com");
/// assert_eq!(canonical_host("[::1]:443"), "[::1]");
/// assert!(matches!(canonical_host("example.com"), std::borrow::Cow::Borrowed(_)));
/// ```
pub fn canonical_host(raw: &str) -> Cow<'_, str> {
    let without_port = match raw.strip_prefix('[') {
        Some(v6) => v6.find(']').map_or(raw, |end| &raw[..end + 2]),
        None => match raw.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => raw,
        },
    };
    let name = without_port.strip_suffix('.').unwrap_or(without_port);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_a_trailing_dot_and_case_are_ignored_on_the_request_side() {
        for raw in ["example.com", "EXAMPLE.com", "example.com.", "example.com:80", "Example.COM.:8443", "example.com:"]
        {
            assert_eq!(canonical_host(raw), "example.com", "{raw}");
        }
        assert_eq!(canonical_host("[::1]"), "[::1]");
        assert_eq!(canonical_host("10.0.0.1:80"), "10.0.0.1");
    }

    #[test]
    fn a_wildcard_takes_one_or_more_labels_and_never_the_bare_suffix() {
        let wild = HostPattern::parse("*.example.com").unwrap();
        assert!(wild.matches("a.example.com"));
        assert!(wild.matches("a.b.c.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches(".example.com"));
        assert!(!wild.matches("badexample.com"));
        assert!(!wild.matches("a.example.org"));
        assert_eq!(wild.suffix_labels(), 2);
    }

    #[test]
    fn config_patterns_are_checked() {
        assert_eq!(HostPattern::parse("[::1]").unwrap(), HostPattern::Exact("[::1]".into()));
        for bad in ["", "*", "*.", "a..b", "a.*.b", "a b", "[::1", "[zz]", "ex ample.com", "a/b", "*example.com"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(HostPattern::parse("x.com:80").unwrap_err().contains("leave the port out"));
        assert!(HostPattern::parse("*").unwrap_err().contains("leave host out"));
    }

    #[test]
    fn a_u_label_is_refused_with_its_a_label() {
        let error = HostPattern::parse("*.München.example").unwrap_err();
        assert!(error.contains("'*.xn--mnchen-3ya.example'"), "{error}");
    }

    #[test]
    fn within_says_when_one_pattern_covers_another() {
        let p = |t: &str| HostPattern::parse(t).unwrap();
        assert!(p("a.example.com").within(&p("*.example.com")));
        assert!(p("*.a.example.com").within(&p("*.example.com")));
        assert!(!p("*.example.com").within(&p("*.a.example.com")));
        assert!(!p("*.example.com").within(&p("a.example.com")));
        assert!(p("a.com").within(&p("a.com")));
    }
}
