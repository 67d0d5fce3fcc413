//! The request target made canonical once, in the front end, before anything reads it: what the
//! admin check and the proxy (and routes) match is exactly what the backend receives. Proxies
//! are broken through the gap between a path as matched and as forwarded (`/public/../admin`,
//! `//admin`, `/%61dmin`, `/admin%2F..`, `..;/`), so a path that cannot be made canonical safely
//! is refused with `400` rather than passed on for the backend to read its own way.
//!
//! The rules (RFC 3986 6.2.2 and 5.2.4, made strict where backends disagree):
//! - `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded; every other `%XX`
//!   keeps its encoding, hex in upper case. Bytes a path may not hold raw (non-ASCII, `"`, `<`,
//!   `>`, `[`, `]`, `^`, `` ` ``, `{`, `|`, `}`) are percent-encoded.
//! - `.` and `..` segments are resolved (also when spelled `%2e`); `..` above the root is refused.
//! - `//` is merged into `/` ([`PathRules::merge_slashes`], on by default, as nginx).
//! - Refused: `#` anywhere in the target, invalid percent-encoding, an encoded control character
//!   (`%00`-`%1F`, `%7F`), a raw `\` (a Windows backend reads it as `/`), `%2F` or `%5C` inside a
//!   segment (unless [`PathRules::allow_encoded_slashes`]: then kept encoded, and a dot segment
//!   beside one is still refused), and a dot segment with a path parameter (`..;`, which Tomcat
//!   reads as `..`).
//!
//! The query is passed on as it came: its meaning belongs to the application.

use std::borrow::Cow;

/// How request paths are made canonical.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathRules {
    /// Merge each run of `/` into one (nginx `merge_slashes`). Default `true`.
    pub merge_slashes: bool,
    /// Accept `%2F` and `%5C` inside a segment, passed on encoded (for APIs that put encoded
    /// names in paths, as GitLab's `group%2Fproject`). Default `false`: refused with `400`.
    pub allow_encoded_slashes: bool,
}

impl Default for PathRules {
    fn default() -> PathRules {
        PathRules { merge_slashes: true, allow_encoded_slashes: false }
    }
}

/// The target with its path made canonical, in the form it came in (origin form `/p?q`, or
/// absolute form `http://host/p?q`). Any other form (`*`, `host:port`, ...) comes back as it
/// is, for the handler to refuse. `Err` says why the target cannot be made canonical.
///
/// ```
/// use lb_sync::server::{canonical_target, PathRules};
/// let rules = PathRules::default();
/// assert_eq!(canonical_target("/public/../admin?x=1", &rules).unwrap(), "/admin?x=1");
/// assert_eq!(canonical_target("//%61dmin/./", &rules).unwrap(), "/admin/");
/// assert_eq!(canonical_target("http://h.example/a/%7e/b", &rules).unwrap(), "http://h.example/a/~/b");
/// assert!(canonical_target("/../etc/passwd", &rules).is_err());
/// assert!(canonical_target("/admin%2F..", &rules).is_err());
/// ```
pub fn canonical_target<'a>(target: &'a str, rules: &PathRules) -> Result<Cow<'a, str>, &'static str> {
    if target.contains('#') {
        return Err("'#' in the request target");
    }
    let path_start = if target.starts_with('/') {
        0
    } else {
        match absolute_path_start(target) {
            Some(start) => start,
            None => return Ok(Cow::Borrowed(target)),
        }
    };
    let (before, rest) = target.split_at(path_start);
    let (path, query) = match rest.find('?') {
        Some(q) => rest.split_at(q),
        None => (rest, ""),
    };
    let path = if path.is_empty() { Cow::Borrowed("/") } else { canonical_path(path, rules)? };
    if path_start == 0 && matches!(path, Cow::Borrowed(_)) {
        return Ok(Cow::Borrowed(target));
    }
    Ok(Cow::Owned(format!("{before}{path}{query}")))
}

/// The scheme and authority of an absolute-form target (`http://authority/...`).
pub(crate) fn absolute_authority(target: &str) -> Option<(&str, &str)> {
    let start = absolute_path_start(target)?;
    let (scheme, _) = target.split_once("://")?;
    Some((scheme, &target[scheme.len() + 3..start]))
}

/// Whether two authorities name the same origin for `scheme`: host case, one trailing dot of
/// the host and the scheme's default port make no difference (`Example.com.:80` is
/// `example.com`).
pub(crate) fn same_authority(scheme: &str, a: &str, b: &str) -> bool {
    let default_port = if scheme.eq_ignore_ascii_case("https") { "443" } else { "80" };
    let origin = |authority: &str| {
        let port_at = match authority.rfind(':') {
            Some(colon) if !authority[colon..].contains(']') => colon,
            _ => authority.len(),
        };
        let (host, port) = authority.split_at(port_at);
        let port = port.strip_prefix(':').filter(|p| !p.is_empty()).unwrap_or(default_port);
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        (host, port.trim_start_matches('0').to_string())
    };
    origin(a) == origin(b)
}

/// Where the path of an absolute-form `http://authority/...` target starts (its length when it
/// has no path); `None` for any other form.
fn absolute_path_start(target: &str) -> Option<usize> {
    let (scheme, rest) = target.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let authority_start = scheme.len() + 3;
    Some(authority_start + rest.find(['/', '?']).unwrap_or(rest.len()))
}

/// The canonical form of `path` (which starts with `/`), borrowed when it already is.
fn canonical_path<'a>(path: &'a str, rules: &PathRules) -> Result<Cow<'a, str>, &'static str> {
    if is_plainly_canonical(path, rules) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = normalise_encoding(path, rules)?;
    resolve_segments(&decoded, rules).map(Cow::Owned)
}

/// The common case, checked in one look: only characters a path holds raw, no `%`, no dot
/// segment, no `//` to merge.
fn is_plainly_canonical(path: &str, rules: &PathRules) -> bool {
    let bytes = path.as_bytes();
    let mut segment_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'/' {
            if i > 0 && (is_dot_like(&bytes[segment_start..i]) || (rules.merge_slashes && segment_start == i)) {
                return false;
            }
            segment_start = i + 1;
        } else if !is_pchar(b) {
            return false;
        }
    }
    !is_dot_like(&bytes[segment_start..])
}

/// A segment that is, or may be, a dot segment (`.`, `..`, `.;x`, `..;x`): left to the full
/// pass.
fn is_dot_like(segment: &[u8]) -> bool {
    matches!(segment, [b'.'] | [b'.', b'.'] | [b'.', b';', ..] | [b'.', b'.', b';', ..])
}

/// A character a path segment may hold without encoding (RFC 3986 `pchar` less `%`).
fn is_pchar(b: u8) -> bool {
    PCHAR[usize::from(b)]
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// `is_pchar` as a table: every request's path is checked byte by byte.
const PCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
            );
        b += 1;
    }
    table
};

fn is_dot(segment: &str) -> bool {
    segment == "." || segment == ".."
}

/// `.;x` or `..;x`: a dot segment to a server that drops path parameters (Tomcat).
fn dot_with_parameter(segment: &str) -> bool {
    segment.split_once(';').is_some_and(|(name, _)| is_dot(name))
}

/// Decodes `%XX` of unreserved characters, upper-cases the hex of the rest, encodes what may not
/// be raw, and refuses what cannot be made canonical safely.
fn normalise_encoding(path: &str, rules: &PathRules) -> Result<String, &'static str> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let value = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .filter(|hex| hex.bytes().all(|h| h.is_ascii_hexdigit()))
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or("invalid percent-encoding in the path")?;
                match value {
                    v if is_unreserved(v) => out.push(v as char),
                    v if v < 0x20 || v == 0x7f => return Err("an encoded control character in the path"),
                    b'/' | b'\\' if !rules.allow_encoded_slashes => return Err("an encoded slash in the path"),
                    v => push_encoded(&mut out, v),
                }
                i += 3;
            }
            b'\\' => return Err("a backslash in the path"),
            b if is_pchar(b) || b == b'/' => {
                out.push(b as char);
                i += 1;
            }
            b => {
                push_encoded(&mut out, b);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn push_encoded(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(byte >> 4)] as char);
    out.push(HEX[usize::from(byte & 0xf)] as char);
}

/// Resolves `.` and `..` and merges `//` in a path whose encoding is already canonical.
fn resolve_segments(path: &str, rules: &PathRules) -> Result<String, &'static str> {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    // A path ending in a dot segment names a directory: it keeps a trailing slash.
    let mut trailing_slash = false;
    for (n, &segment) in segments.iter().enumerate() {
        let last = n + 1 == segments.len();
        if dot_with_parameter(segment) {
            return Err("a dot segment with a path parameter ('..;')");
        }
        if rules.allow_encoded_slashes && !is_dot(segment) && hides_a_dot_segment(segment) {
            return Err("a dot segment beside an encoded slash");
        }
        match segment {
            "." => trailing_slash = last,
            ".." => {
                kept.pop().ok_or("'..' above the root of the path")?;
                trailing_slash = last;
            }
            "" if rules.merge_slashes => trailing_slash = last,
            _ => {
                kept.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Whether a backend that decodes `%2F`/`%5C` would find a dot segment in `segment`.
fn hides_a_dot_segment(segment: &str) -> bool {
    segment.split("%2F").flat_map(|part| part.split("%5C")).any(|part| is_dot(part) || dot_with_parameter(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(target: &str) -> Result<String, &'static str> {
        canonical_target(target, &PathRules::default()).map(Cow::into_owned)
    }

    proptest::proptest! {
        #[test]
        fn the_quick_check_agrees_with_the_full_pass(
            path in "/[a-z./;%2Ee~]{0,16}",
            merge_slashes in proptest::prelude::any::<bool>(),
        ) {
            let rules = PathRules { merge_slashes, allow_encoded_slashes: false };
            if is_plainly_canonical(&path, &rules) {
                let full = normalise_encoding(&path, &rules).and_then(|p| resolve_segments(&p, &rules));
                proptest::prop_assert_eq!(full.as_deref(), Ok(path.as_str()));
            }
        }
    }

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        for path in ["/", "/a", "/a/b/", "/a;b=c/d", "/~user/x.y", "/a?q=%zz#", "/a?x=..//"] {
            let rules = PathRules::default();
            if path.contains('#') {
                assert!(canonical_target(path, &rules).is_err());
                continue;
            }
            assert!(matches!(canonical_target(path, &rules), Ok(Cow::Borrowed(p)) if p == path), "{path}");
        }
    }

    #[test]
    fn dot_segments_resolve_and_keep_a_trailing_slash() {
        assert_eq!(canon("/a/./b").unwrap(), "/a/b");
        assert_eq!(canon("/a/b/..").unwrap(), "/a/");
        assert_eq!(canon("/a/.").unwrap(), "/a/");
        assert_eq!(canon("/.").unwrap(), "/");
        assert_eq!(canon("/a/../../b"), Err("'..' above the root of the path"));
        assert_eq!(canon("/.."), Err("'..' above the root of the path"));
        assert_eq!(canon("/a/%2e%2E/b").unwrap(), "/b");
        assert_eq!(canon("/a/.%2e/b").unwrap(), "/b");
        assert_eq!(canon("/a..b/.x/x.").unwrap(), "/a..b/.x/x.");
    }

    #[test]
    fn slashes_merge_unless_told_not_to() {
        assert_eq!(canon("//admin").unwrap(), "/admin");
        assert_eq!(canon("/a//b///").unwrap(), "/a/b/");
        let keep = PathRules { merge_slashes: false, ..PathRules::default() };
        assert_eq!(canonical_target("/a//b", &keep).unwrap(), "/a//b");
        assert_eq!(canonical_target("/a//../b", &keep).unwrap(), "/a/b");
    }

    #[test]
    fn encodings_are_decoded_only_for_unreserved_characters() {
        assert_eq!(canon("/%61dmin").unwrap(), "/admin");
        assert_eq!(canon("/a%20b%3f%3F").unwrap(), "/a%20b%3F%3F");
        assert_eq!(canon("/%25%32%65").unwrap(), "/%252e", "a decoded %25 is never decoded again");
        assert_eq!(canon("/caf\u{e9}").unwrap(), "/caf%C3%A9");
        assert_eq!(canon("/a\"<>[]^`{|}").unwrap(), "/a%22%3C%3E%5B%5D%5E%60%7B%7C%7D");
    }

    #[test]
    fn what_cannot_be_made_canonical_is_refused() {
        assert_eq!(canon("/a%"), Err("invalid percent-encoding in the path"));
        assert_eq!(canon("/a%2"), Err("invalid percent-encoding in the path"));
        assert_eq!(canon("/a%g0"), Err("invalid percent-encoding in the path"));
        assert_eq!(canon("/a%+1"), Err("invalid percent-encoding in the path"));
        assert_eq!(canon("/a%00"), Err("an encoded control character in the path"));
        assert_eq!(canon("/a%0d%0a"), Err("an encoded control character in the path"));
        assert_eq!(canon("/a%7f"), Err("an encoded control character in the path"));
        assert_eq!(canon("/admin%2F.."), Err("an encoded slash in the path"));
        assert_eq!(canon("/a%5cb"), Err("an encoded slash in the path"));
        assert_eq!(canon("/a\\..\\b"), Err("a backslash in the path"));
        assert_eq!(canon("/public/..;/admin"), Err("a dot segment with a path parameter ('..;')"));
        assert_eq!(canon("/public/.;x/admin"), Err("a dot segment with a path parameter ('..;')"));
        assert_eq!(canon("/a#b"), Err("'#' in the request target"));
        assert_eq!(canon("/a?b#c"), Err("'#' in the request target"));
    }

    #[test]
    fn encoded_slashes_when_allowed_stay_encoded_and_never_hide_a_dot_segment() {
        let allow = PathRules { allow_encoded_slashes: true, ..PathRules::default() };
        assert_eq!(canonical_target("/api/group%2fproject", &allow).unwrap(), "/api/group%2Fproject");
        assert_eq!(canonical_target("/a%5Cb", &allow).unwrap(), "/a%5Cb");
        assert!(canonical_target("/admin%2F..", &allow).is_err());
        assert!(canonical_target("/x/%2e%2e%2fadmin", &allow).is_err());
        assert!(canonical_target("/x/.%5Cadmin", &allow).is_err());
        assert!(canonical_target("/x/a%2F..;y", &allow).is_err());
    }

    #[test]
    fn authorities_compare_as_origins() {
        assert!(same_authority("http", "Example.COM.", "example.com:80"));
        assert!(same_authority("https", "a:443", "A."));
        assert!(same_authority("http", "[::1]:8080", "[::1]:08080"));
        assert!(same_authority("http", "[::1]", "[::1]:80"));
        assert!(!same_authority("https", "a", "a:80"));
        assert!(!same_authority("http", "a:8080", "b:8080"));
        assert!(!same_authority("http", "a..", "a"));
        assert_eq!(absolute_authority("http://h:1/p?q"), Some(("http", "h:1")));
        assert_eq!(absolute_authority("https://h?q"), Some(("https", "h")));
        assert_eq!(absolute_authority("/p"), None);
    }

    #[test]
    fn absolute_form_keeps_its_authority_and_other_forms_pass_through() {
        assert_eq!(canon("http://h/a/../b?q").unwrap(), "http://h/b?q");
        assert_eq!(canon("HTTPS://h:8443").unwrap(), "HTTPS://h:8443/");
        assert_eq!(canon("http://h?q=1").unwrap(), "http://h/?q=1");
        assert_eq!(canon("*").unwrap(), "*");
        assert_eq!(canon("example.com:443").unwrap(), "example.com:443");
        assert_eq!(canon("http:http://x/").unwrap(), "http:http://x/");
        assert!(canon("http://h/..").is_err());
    }
}
