//! The matchers besides host and path: `methods`, `headers` and `query`. Headers are read with
//! [`field::sole`]: a field sent more than once, or with a byte that is not printable ASCII,
//! matches no header matcher, `true` (present) included. A query parameter given more than once,
//! or not validly percent-encoded, matches no query matcher. Both fail closed: an ambiguous
//! request never takes a route that a backend could read differently.

use std::borrow::Cow;

use regex::Regex;

use crate::server::field::{self, Sole};
use crate::server::Header;

/// A header matcher as built.
#[derive(Clone, Debug)]
pub enum HeaderTest {
    /// `true`: the field is present once, readable.
    Present,
    /// A string: the field's one value (trimmed) is exactly this, case-sensitive.
    Exact(String),
    /// `{"regex": "..."}`: the field's one value matches, anchored at both ends.
    Regex(String, Regex),
}

/// A query matcher as built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryTest {
    /// `true`: the parameter is given once.
    Present,
    /// A string: the parameter is given once, with this value (percent-decoded).
    Equals(String),
}

/// The `methods`, `headers` and `query` of one route.
#[derive(Clone, Debug, Default)]
pub struct Conditions {
    /// Methods that match (exact, case-sensitive); empty: any.
    pub methods: Vec<String>,
    /// Header name (lowercase) and test.
    pub headers: Vec<(String, HeaderTest)>,
    /// Parameter name (decoded) and test.
    pub query: Vec<(String, QueryTest)>,
}

/// The first matcher of a route that a request fails, for [`RouteTable::explain`](super::RouteTable::explain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// No `host` pattern of the route matches the request's host (or it has none).
    Host,
    /// The path matcher does not take the path.
    Path,
    /// The method is not in `methods`.
    Method,
    /// A header matcher fails.
    Header {
        /// The field's name (lowercase).
        name: String,
        /// Why.
        why: Unmet,
    },
    /// A query matcher fails.
    Query {
        /// The parameter's name.
        name: String,
        /// Why.
        why: Unmet,
    },
}

/// Why a header or query matcher fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmet {
    /// Not in the request.
    Absent,
    /// Given more than once, or not readable (a byte that is not printable ASCII, bad encoding).
    Unusable,
    /// Given once, with a value the matcher does not take.
    Value,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = |unmet: &Unmet| match unmet {
            Unmet::Absent => "is absent",
            Unmet::Unusable => "is given more than once or is unreadable (never matches)",
            Unmet::Value => "has another value",
        };
        match self {
            Mismatch::Host => f.write_str("host"),
            Mismatch::Path => f.write_str("path"),
            Mismatch::Method => f.write_str("method"),
            Mismatch::Header { name, why: unmet } => write!(f, "header '{name}' {}", why(unmet)),
            Mismatch::Query { name, why: unmet } => write!(f, "query parameter '{name}' {}", why(unmet)),
        }
    }
}

impl HeaderTest {
    fn accepts(&self, value: &str) -> bool {
        match self {
            HeaderTest::Present => true,
            HeaderTest::Exact(expected) => value == expected,
            HeaderTest::Regex(_, regex) => regex.is_match(value),
        }
    }

    /// Whether this test holds whenever `other` does (same field).
    fn implied_by(&self, other: &HeaderTest) -> bool {
        match (self, other) {
            (HeaderTest::Present, _) => true,
            (HeaderTest::Exact(a), HeaderTest::Exact(b)) => a == b,
            (HeaderTest::Regex(a, _), HeaderTest::Regex(b, _)) => a == b,
            (HeaderTest::Regex(_, regex), HeaderTest::Exact(value)) => regex.is_match(value),
            _ => false,
        }
    }

    /// Whether no value passes both (conservative).
    fn excludes(&self, other: &HeaderTest) -> bool {
        match (self, other) {
            (HeaderTest::Exact(a), HeaderTest::Exact(b)) => a != b,
            (HeaderTest::Exact(value), HeaderTest::Regex(_, regex))
            | (HeaderTest::Regex(_, regex), HeaderTest::Exact(value)) => !regex.is_match(value),
            _ => false,
        }
    }
}

impl Conditions {
    /// How many matchers: the methods list counts as one, each header and parameter as one.
    pub fn count(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len() + self.query.len()
    }

    /// Whether a request passes every matcher.
    pub fn matches(&self, method: &str, headers: &[Header], query: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && self.headers.iter().all(|(name, test)| match field::sole(headers, name) {
                Sole::Text(value) => test.accepts(value),
                Sole::Absent | Sole::Unusable => false,
            })
            && self.query.iter().all(|(name, test)| match sole_parameter(query, name) {
                Some(value) => match test {
                    QueryTest::Present => true,
                    QueryTest::Equals(expected) => value == expected.as_str(),
                },
                None => false,
            })
    }

    /// The first of these matchers a request fails (methods, then headers, then query, each in
    /// the route's order), `None` when it passes them all: [`matches`](Self::matches) spelled out.
    pub fn first_mismatch(&self, method: &str, headers: &[Header], query: &str) -> Option<Mismatch> {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return Some(Mismatch::Method);
        }
        for (name, test) in &self.headers {
            let why = match field::sole(headers, name) {
                Sole::Text(value) if test.accepts(value) => continue,
                Sole::Text(_) => Unmet::Value,
                Sole::Absent => Unmet::Absent,
                Sole::Unusable => Unmet::Unusable,
            };
            return Some(Mismatch::Header { name: name.clone(), why });
        }
        for (name, test) in &self.query {
            let why = match sole_parameter(query, name) {
                Some(value) if matches!(test, QueryTest::Equals(expected) if value != expected.as_str()) => {
                    Unmet::Value
                }
                Some(_) => continue,
                None if parameter_named(query, name) => Unmet::Unusable,
                None => Unmet::Absent,
            };
            return Some(Mismatch::Query { name: name.clone(), why });
        }
        None
    }

    /// Whether no request passes both (conservative: `false` unless provably so): disjoint
    /// method lists, or one header or parameter with values that exclude each other.
    pub(crate) fn disjoint(&self, other: &Conditions) -> bool {
        let methods = !self.methods.is_empty()
            && !other.methods.is_empty()
            && !self.methods.iter().any(|m| other.methods.contains(m));
        let headers = self
            .headers
            .iter()
            .any(|(name, a)| other.headers.iter().any(|(other_name, b)| name == other_name && a.excludes(b)));
        let query = self.query.iter().any(|(name, a)| {
            other.query.iter().any(|(other_name, b)| {
                name == other_name && matches!((a, b), (QueryTest::Equals(x), QueryTest::Equals(y)) if x != y)
            })
        });
        methods || headers || query
    }

    /// Whether these conditions hold for every request that passes `other`'s.
    pub(crate) fn implied_by(&self, other: &Conditions) -> bool {
        let methods = self.methods.is_empty()
            || (!other.methods.is_empty() && other.methods.iter().all(|m| self.methods.contains(m)));
        let headers = self
            .headers
            .iter()
            .all(|(name, a)| other.headers.iter().any(|(other_name, b)| name == other_name && a.implied_by(b)));
        let query = self.query.iter().all(|(name, a)| {
            other.query.iter().any(|(other_name, b)| name == other_name && (a == b || *a == QueryTest::Present))
        });
        methods && headers && query
    }
}

/// The one value of parameter `name` in a query string, percent-decoded; `None` when it is
/// absent, given more than once, or any instance of it is not validly encoded. `a` and `a=`
/// both give the empty value; `+` is kept as it is.
///
/// ```
/// use lb_sync::routing::sole_parameter;
/// assert_eq!(sole_parameter("a=1&b=%32", "b").as_deref(), Some("2"));
/// assert_eq!(sole_parameter("debug&x=1", "debug").as_deref(), Some(""));
/// assert_eq!(sole_parameter("a=1&a=2", "a"), None);
/// ```
pub fn sole_parameter<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    let mut found = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        // An unreadable name may be this one: then nothing can be trusted.
        let decoded = percent_decode(raw_name)?;
        if decoded != name {
            continue;
        }
        if found.is_some() {
            return None;
        }
        found = Some(percent_decode(raw_value)?);
    }
    found
}

/// Whether some parameter of `query` may be `name`: it is, or its name cannot be decoded.
fn parameter_named(query: &str, name: &str) -> bool {
    query.split('&').filter(|p| !p.is_empty()).any(|pair| {
        let raw_name = pair.split_once('=').map_or(pair, |(n, _)| n);
        percent_decode(raw_name).is_none_or(|decoded| decoded == name)
    })
}

/// `%XX` decoded; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(text: &str) -> Option<Cow<'_, str>> {
    if !text.contains('%') {
        return Some(Cow::Borrowed(text));
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            let (h, l) = (hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?);
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::path::anchored;

    fn with_header(name: &str, test: HeaderTest) -> Conditions {
        Conditions { headers: vec![(name.into(), test)], ..Default::default() }
    }

    #[test]
    fn a_header_sent_twice_or_with_odd_bytes_matches_nothing() {
        let exact = with_header("x-env", HeaderTest::Exact("canary".into()));
        let present = with_header("x-env", HeaderTest::Present);
        let one = [Header::new("X-Env", " canary ")];
        assert!(exact.matches("GET", &one, "") && present.matches("GET", &one, ""));
        let twice = [Header::new("X-Env", "canary"), Header::new("x-env", "canary")];
        assert!(!exact.matches("GET", &twice, "") && !present.matches("GET", &twice, ""));
        let odd = [Header::new("X-Env", b"canary\xff".to_vec())];
        assert!(!exact.matches("GET", &odd, "") && !present.matches("GET", &odd, ""));
        let control = [Header::new("X-Env", b"can\x01ary".to_vec())];
        assert!(!present.matches("GET", &control, ""));
        assert!(!present.matches("GET", &[], ""));
        let underscore = [Header::new("X_Env", "canary")];
        assert!(!present.matches("GET", &underscore, ""), "never read as its dashed twin");
    }

    #[test]
    fn header_values_are_exact_or_a_whole_regex_match() {
        let exact = with_header("x-env", HeaderTest::Exact("canary".into()));
        assert!(!exact.matches("GET", &[Header::new("X-Env", "Canary")], ""));
        let regex = with_header("x-env", HeaderTest::Regex("can.*".into(), anchored("can.*").unwrap()));
        assert!(regex.matches("GET", &[Header::new("X-Env", "canary")], ""));
        assert!(!regex.matches("GET", &[Header::new("X-Env", "a-canary")], ""), "anchored");
    }

    #[test]
    fn methods_are_compared_exactly() {
        let get = Conditions { methods: vec!["GET".into(), "HEAD".into()], ..Default::default() };
        assert!(get.matches("GET", &[], "") && get.matches("HEAD", &[], ""));
        assert!(!get.matches("get", &[], "") && !get.matches("POST", &[], ""));
    }

    #[test]
    fn query_parameters_are_once_and_decoded_or_nothing() {
        let equal = Conditions { query: vec![("v".into(), QueryTest::Equals("2 x".into()))], ..Default::default() };
        assert!(equal.matches("GET", &[], "a=1&v=2%20x"));
        assert!(!equal.matches("GET", &[], "v=2%20x&v=2%20x"), "twice");
        assert!(!equal.matches("GET", &[], "v=2%2"), "malformed");
        assert!(!equal.matches("GET", &[], "v=2+x"), "+ is not decoded");
        assert!(!equal.matches("GET", &[], "%76=2%20x&v=2%20x"), "twice, once encoded");
        assert!(!equal.matches("GET", &[], "%ZZ=1&v=2%20x"), "an unreadable name may be v");
        let present = Conditions { query: vec![("debug".into(), QueryTest::Present)], ..Default::default() };
        assert!(present.matches("GET", &[], "debug") && present.matches("GET", &[], "x&debug=0"));
        assert!(!present.matches("GET", &[], "debugx=1") && !present.matches("GET", &[], ""));
    }

    #[test]
    fn disjointness_is_proved_only_by_values_that_exclude_each_other() {
        let m =
            |list: &[&str]| Conditions { methods: list.iter().map(|s| s.to_string()).collect(), ..Default::default() };
        assert!(m(&["GET"]).disjoint(&m(&["POST"])));
        assert!(!m(&["GET", "POST"]).disjoint(&m(&["POST"])));
        assert!(!m(&[]).disjoint(&m(&["POST"])));
        let h = |v: &str| with_header("x", HeaderTest::Exact(v.into()));
        assert!(h("a").disjoint(&h("b")) && !h("a").disjoint(&h("a")));
        assert!(!h("a").disjoint(&with_header("x", HeaderTest::Present)));
        assert!(!h("a").disjoint(&with_header("y", HeaderTest::Exact("b".into()))));
        assert!(h("a").disjoint(&with_header("x", HeaderTest::Regex("b.*".into(), anchored("b.*").unwrap()))));
        let q = |v: &str| Conditions { query: vec![("v".into(), QueryTest::Equals(v.into()))], ..Default::default() };
        assert!(q("1").disjoint(&q("2")) && !q("1").disjoint(&q("1")));
    }
}
