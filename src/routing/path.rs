//! Path matching on the canonical path (dot segments resolved, `//` merged, unreserved
//! characters decoded: the front end's work): exact, prefix on segment boundaries, or an
//! anchored regex.

use regex::Regex;

use crate::server::{canonical_target, PathRules};

/// A route's path matcher.
#[derive(Clone, Debug)]
pub enum PathMatch {
    /// No path matcher: every path.
    Any,
    /// `path`: this path only.
    Exact(String),
    /// `path_prefix`: on segment boundaries. `/api` takes `/api`, `/api/` and `/api/x`, never
    /// `/apiv2`; `/api/` takes `/api/` and below, not `/api`.
    Prefix(String),
    /// `path_regex`: the whole path must match (anchored at both ends).
    Regex(PathRegex),
}

/// A `path_regex` as written and as compiled (`\A(?:...)\z`).
#[derive(Clone, Debug)]
pub struct PathRegex {
    /// As written in the config.
    pub source: String,
    /// Anchored at both ends.
    pub regex: Regex,
}

impl PathMatch {
    /// Whether a canonical path matches.
    ///
    /// ```
    /// use lb_sync::routing::PathMatch;
    /// let api = PathMatch::Prefix("/api".into());
    /// assert!(api.matches("/api") && api.matches("/api/") && api.matches("/api/x"));
    /// assert!(!api.matches("/apiv2"));
    /// ```
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Prefix(prefix) => is_under(path, prefix),
            PathMatch::Regex(r) => r.regex.is_match(path),
        }
    }

    /// Whether every path this matcher takes, `outer` takes too (conservative: `false` where
    /// it cannot tell, as for two different regexes).
    pub(crate) fn within(&self, outer: &PathMatch) -> bool {
        match (self, outer) {
            (_, PathMatch::Any) => true,
            (PathMatch::Exact(p), _) => outer.matches(p),
            (PathMatch::Prefix(inner), PathMatch::Prefix(prefix)) => is_under(inner, prefix),
            (PathMatch::Regex(a), PathMatch::Regex(b)) => a.source == b.source,
            _ => false,
        }
    }

    /// Whether no path matches both (conservative: `false` where it cannot tell).
    pub(crate) fn disjoint(&self, other: &PathMatch) -> bool {
        match (self, other) {
            (PathMatch::Any, _) | (_, PathMatch::Any) => false,
            (PathMatch::Exact(p), m) | (m, PathMatch::Exact(p)) => !m.matches(p),
            (PathMatch::Prefix(a), PathMatch::Prefix(b)) => !is_under(a, b) && !is_under(b, a),
            (PathMatch::Regex(a), PathMatch::Regex(b)) => literals_diverge(&a.source, &b.source),
            (PathMatch::Prefix(p), PathMatch::Regex(r)) | (PathMatch::Regex(r), PathMatch::Prefix(p)) => {
                literals_diverge(p, &r.source)
            }
        }
    }
}

/// Whether `path` is `prefix` or below it on a segment boundary.
pub(crate) fn is_under(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix)
        && (path.len() == prefix.len() || prefix.ends_with('/') || path.as_bytes()[prefix.len()] == b'/')
}

/// Calls `each` with every `path_prefix` that takes `path`, longest first, until it answers.
pub(crate) fn longest_prefix_first<T>(path: &str, mut each: impl FnMut(&str) -> Option<T>) -> Option<T> {
    if let Some(found) = each(path) {
        return Some(found);
    }
    let bytes = path.as_bytes();
    for i in (0..bytes.len()).rev() {
        if bytes[i] != b'/' {
            continue;
        }
        if i + 1 < bytes.len() {
            if let Some(found) = each(&path[..=i]) {
                return Some(found);
            }
        }
        if i > 0 {
            if let Some(found) = each(&path[..i]) {
                return Some(found);
            }
        }
    }
    None
}

/// The literal text a regex's every match starts with (conservative: stops at the first
/// character with a meaning, and drops a literal that a quantifier may repeat or remove).
fn literal_start(source: &str) -> &str {
    let end = source.find(|c: char| r"\.+*?()|[]{}^$".contains(c)).unwrap_or(source.len());
    let quantified = source[end..].starts_with(['?', '*', '{', '+']);
    if quantified {
        let last = source[..end].char_indices().last().map_or(0, |(i, _)| i);
        &source[..last]
    } else {
        &source[..end]
    }
}

/// Whether two patterns' literal starts differ before either ends: then no path matches both.
fn literals_diverge(a: &str, b: &str) -> bool {
    let (a, b) = (literal_start(a), literal_start(b));
    !a.starts_with(b) && !b.starts_with(a)
}

/// Checks a `path` or `path_prefix` from the config: it must be a canonical path, or it could
/// never match one.
pub(crate) fn check_canonical(key: &str, path: &str) -> Result<(), String> {
    let why = if !path.starts_with('/') {
        "must start with '/'"
    } else if path.contains("//") {
        "has '//' (requests are matched with '//' merged)"
    } else if path.split('/').any(|s| s == "." || s == "..") {
        "has a '.' or '..' segment (requests are matched with them resolved)"
    } else if path.contains(['?', '#']) {
        "has '?' or '#' (match a query with `query`)"
    } else if path.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        "has a space, a control character or a byte that is not ASCII (write it percent-encoded)"
    } else if has_encoded_unreserved(path) {
        "percent-encodes a letter, digit or -._~ (requests are matched with those decoded: write the character)"
    } else {
        // The front end's own rules decide the rest (hex case, characters a path may not hold
        // raw...): a path is canonical when they leave it as it is.
        let rules = PathRules { merge_slashes: true, allow_encoded_slashes: true };
        return match canonical_target(path, &rules) {
            Ok(canonical) if canonical == path => Ok(()),
            Ok(canonical) => Err(format!("{key} '{path}' is not canonical: requests are matched as '{canonical}'")),
            Err(why) => Err(format!("{key} '{path}' can never match: a request with {why} is refused")),
        };
    };
    Err(format!("{key} '{path}' {why}"))
}

fn has_encoded_unreserved(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| {
        let hex = |b: u8| (b as char).to_digit(16);
        match (w[0], hex(w[1]), hex(w[2])) {
            (b'%', Some(h), Some(l)) => {
                let c = (h * 16 + l) as u8;
                c.is_ascii_alphanumeric() || b"-._~".contains(&c)
            }
            _ => false,
        }
    })
}

/// Compiles a `path_regex` (or a header regex) anchored at both ends.
pub(crate) fn anchored(source: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(&format!(r"\A(?:{source})\z"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("regex '{source}' does not compile: {}", e.to_string().lines().last().unwrap_or("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regex(source: &str) -> PathMatch {
        PathMatch::Regex(PathRegex { source: source.into(), regex: anchored(source).unwrap() })
    }

    #[test]
    fn prefixes_end_on_segment_boundaries() {
        let api = PathMatch::Prefix("/api".into());
        for yes in ["/api", "/api/", "/api/x", "/api/x/y"] {
            assert!(api.matches(yes), "{yes}");
        }
        for no in ["/apiv2", "/ap", "/", "/x/api"] {
            assert!(!api.matches(no), "{no}");
        }
        let slash = PathMatch::Prefix("/api/".into());
        assert!(slash.matches("/api/") && slash.matches("/api/x"));
        assert!(!slash.matches("/api") && !slash.matches("/apiv2/"));
        let root = PathMatch::Prefix("/".into());
        assert!(root.matches("/") && root.matches("/anything/at/all"));
    }

    #[test]
    fn the_prefixes_of_a_path_come_longest_first() {
        let mut seen = Vec::new();
        longest_prefix_first::<()>("/a/b/c", |p| {
            seen.push(p.to_string());
            None
        });
        assert_eq!(seen, ["/a/b/c", "/a/b/", "/a/b", "/a/", "/a", "/"]);
        seen.clear();
        longest_prefix_first::<()>("/a/", |p| {
            seen.push(p.to_string());
            None
        });
        assert_eq!(seen, ["/a/", "/a", "/"]);
        // Every one takes the path, and no other prefix of it does.
        let path = "/x/yy/z";
        longest_prefix_first::<()>(path, |p| {
            assert!(is_under(path, p), "{p}");
            None
        });
    }

    #[test]
    fn a_regex_is_anchored_at_both_ends() {
        let r = regex("/v[0-9]+/items");
        assert!(r.matches("/v2/items"));
        assert!(!r.matches("/v2/items/x") && !r.matches("/x/v2/items"));
        let alternation = regex("/a|/b");
        assert!(alternation.matches("/a") && alternation.matches("/b"));
        assert!(!alternation.matches("/a/b") && !alternation.matches("/ab"));
        assert!(anchored("(").is_err());
    }

    #[test]
    fn literal_starts_prove_regexes_disjoint_only_when_they_are() {
        assert!(regex("/a/[0-9]+").disjoint(&regex("/b/.*")));
        assert!(!regex("/a/[0-9]+").disjoint(&regex("/a/x.*")));
        assert!(!regex("/ab?").disjoint(&regex("/a")), "b? may be absent");
        assert!(!regex("(?i)/A").disjoint(&regex("/a")));
        assert!(PathMatch::Prefix("/static".into()).disjoint(&regex("/api/.*")));
        assert!(!PathMatch::Prefix("/api".into()).disjoint(&regex("/api.*")));
        assert!(PathMatch::Exact("/x".into()).disjoint(&regex("/y")));
        assert!(PathMatch::Prefix("/a".into()).disjoint(&PathMatch::Prefix("/b".into())));
        assert!(PathMatch::Prefix("/a".into()).disjoint(&PathMatch::Prefix("/ab".into())));
        assert!(!PathMatch::Prefix("/a".into()).disjoint(&PathMatch::Prefix("/a/b".into())));
    }

    #[test]
    fn config_paths_must_be_canonical() {
        assert!(check_canonical("path", "/api/v1").is_ok());
        assert!(check_canonical("path", "/a%2Fb").is_ok(), "an encoded slash stays encoded");
        for bad in [
            "api",
            "/a//b",
            "/a/../b",
            "/./a",
            "/a?b",
            "/a#b",
            "/a b",
            "/%61dmin",
            "/caf\u{e9}",
            "/a%3f",
            "/a|b",
            "/a\\b",
            "/a/..;/b",
            "/a%00",
        ] {
            assert!(check_canonical("path", bad).is_err(), "{bad}");
        }
    }
}
