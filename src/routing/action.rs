//! What a route does with a request it takes: parsed and checked here, carried out elsewhere
//! (the proxy). Exactly one of `pool`, `split`, `redirect` and `respond`; a path rewrite and
//! header edits go with `pool` and `split`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::path::{check_canonical, is_under, PathMatch};

/// One side of a `split`: a pool and its relative weight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitShare {
    /// The pool's name.
    pub pool: String,
    /// Relative share, 0-1000000 (0: none for now, as a canary not yet started).
    pub weight: u32,
}

/// `redirect`: answer with a redirect to the request's URL with these parts replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// 301, 302, 307 or 308.
    pub status: u16,
    /// `http` or `https`; default the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// `host` or `host:port`; default the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The path (and query, if given); default the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl Redirect {
    /// The `Location` it answers a request with: the request's URL with the parts the route
    /// names replaced (a `path` replaces the query too). `scheme` and `host` are the request's
    /// (`host` as sent, port included; `None`: a relative `Location`), `target` its origin-form
    /// target.
    ///
    /// ```
    /// use lb_sync::routing::Redirect;
    /// let https = Redirect { status: 301, scheme: Some("https".into()), host: None, path: None };
    /// assert_eq!(https.location("http", Some("example.com"), "/a?b=1"), "https://example.com/a?b=1");
    /// let moved = Redirect { status: 308, scheme: None, host: Some("new.example".into()), path: Some("/".into()) };
    /// assert_eq!(moved.location("http", None, "/a"), "http://new.example/");
    /// ```
    pub fn location(&self, scheme: &str, host: Option<&str>, target: &str) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(scheme);
        let path = self.path.as_deref().unwrap_or(target);
        match self.host.as_deref().or(host) {
            Some(host) => format!("{scheme}://{host}{path}"),
            None => path.to_string(),
        }
    }
}

/// `respond`: answer at once with this status and body (a deny rule, a maintenance page).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    /// 200-599.
    pub status: u16,
    /// The body, as text; default empty. At most 64 KiB.
    #[serde(default)]
    pub body: String,
}

/// `request_headers` / `response_headers`: fields set (replacing any of the name), added, and
/// removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    /// Name → value, replacing every field of that name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Name → value, added beside any of that name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Names removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderEdits {
    /// Whether `name` is one of the fields removed (case-insensitive).
    pub fn removes(&self, name: &str) -> bool {
        self.remove.iter().any(|removed| removed.eq_ignore_ascii_case(name))
    }
}

/// Where a route sends what it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `pool`: to this pool.
    Pool(String),
    /// `split`: across pools by weight.
    Split(Vec<SplitShare>),
    /// `redirect`.
    Redirect(Redirect),
    /// `respond`.
    Respond(Respond),
}

/// How the path sent upstream differs from the request's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// `strip_prefix`: this prefix removed (`/api/x` → `/x`, `/api` → `/`).
    Strip(String),
    /// `add_prefix`: this put before the path (`/x` → `/v1/x`).
    Add(String),
    /// `replace_prefix`: the route's `path_prefix` (`from`) replaced by `to`.
    Replace {
        /// The route's `path_prefix`.
        from: String,
        /// What replaces it.
        to: String,
    },
}

impl Rewrite {
    /// The client's path for a path upstream: the rewrite undone (for a backend's `Location`);
    /// `None` when the rewrite could not have produced it.
    ///
    /// ```
    /// use lb_sync::routing::Rewrite;
    /// assert_eq!(Rewrite::Strip("/api".into()).reverse("/users").as_deref(), Some("/api/users"));
    /// assert_eq!(Rewrite::Add("/v1".into()).reverse("/v1/users").as_deref(), Some("/users"));
    /// assert_eq!(Rewrite::Add("/v1".into()).reverse("/v2/users"), None);
    /// ```
    pub fn reverse(&self, upstream: &str) -> Option<String> {
        match self {
            Rewrite::Strip(prefix) => Some(format!("{}{upstream}", prefix.trim_end_matches('/'))),
            Rewrite::Add(prefix) => {
                let rest = upstream.strip_prefix(prefix.trim_end_matches('/'))?;
                match rest {
                    "" => Some("/".to_string()),
                    rest if rest.starts_with('/') => Some(rest.to_string()),
                    _ => None,
                }
            }
            Rewrite::Replace { from, to } => upstream.strip_prefix(to.as_str()).map(|rest| format!("{from}{rest}")),
        }
    }

    /// The path to send upstream for a canonical request path the route took.
    ///
    /// ```
    /// use lb_sync::routing::Rewrite;
    /// assert_eq!(Rewrite::Strip("/api".into()).apply("/api/users"), "/users");
    /// assert_eq!(Rewrite::Strip("/api".into()).apply("/api"), "/");
    /// assert_eq!(Rewrite::Add("/v1".into()).apply("/users"), "/v1/users");
    /// let replace = Rewrite::Replace { from: "/old/".into(), to: "/new/".into() };
    /// assert_eq!(replace.apply("/old/a"), "/new/a");
    /// ```
    pub fn apply(&self, path: &str) -> String {
        match self {
            Rewrite::Strip(prefix) => {
                let rest = path.strip_prefix(prefix.trim_end_matches('/')).unwrap_or(path);
                if rest.starts_with('/') {
                    rest.to_string()
                } else {
                    format!("/{rest}")
                }
            }
            Rewrite::Add(prefix) => format!("{}{path}", prefix.trim_end_matches('/')),
            Rewrite::Replace { from, to } => match path.strip_prefix(from.as_str()) {
                Some(rest) => format!("{to}{rest}"),
                None => path.to_string(),
            },
        }
    }
}

/// Per-route settings that replace the top-level ones of the same name for this route's
/// requests; ranges are the top-level keys' (checked by the config).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Overrides {
    /// `request_timeout`, seconds.
    pub request_timeout: Option<f64>,
    /// `connect_timeout`, seconds.
    pub connect_timeout: Option<f64>,
    /// `max_tries`.
    pub max_tries: Option<usize>,
    /// `rate_limit`: requests per second through this route, all clients together.
    pub rate_limit: Option<f64>,
    /// `rate_limit_burst`.
    pub rate_limit_burst: Option<u32>,
    /// `client_rate_limit`: requests per second through this route, per client.
    pub client_rate_limit: Option<f64>,
    /// `client_rate_limit_burst`.
    pub client_rate_limit_burst: Option<u32>,
}

/// Whether `name` may name a pool or a route: `[A-Za-z0-9_.-]+`, at most 64.
///
/// ```
/// assert!(lb_sync::routing::is_valid_name("api-v2.eu_1"));
/// assert!(!lb_sync::routing::is_valid_name("a b") && !lb_sync::routing::is_valid_name(""));
/// ```
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The most bytes a `respond` body may have: a page, not a payload.
const MAX_RESPOND_BODY: usize = 64 * 1024;
/// The largest split weight.
const MAX_WEIGHT: u32 = 1_000_000;

/// Fields whose framing or hop-by-hop meaning is the proxy's, never a route's to edit.
const PROXY_OWNED: [&str; 8] =
    ["content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer", "proxy-connection"];

fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks the one action of a route (`pool`/`split`/`redirect`/`respond` as parsed).
pub(crate) fn check_action(action: &Action) -> Result<(), String> {
    match action {
        Action::Pool(pool) if !is_valid_name(pool) => {
            Err(format!("pool '{pool}' is not a pool name ([A-Za-z0-9_.-]+)"))
        }
        Action::Pool(_) => Ok(()),
        Action::Split(shares) => {
            if shares.is_empty() {
                return Err("split lists no pool".into());
            }
            for (i, share) in shares.iter().enumerate() {
                if !is_valid_name(&share.pool) {
                    return Err(format!("split pool '{}' is not a pool name ([A-Za-z0-9_.-]+)", share.pool));
                }
                if share.weight > MAX_WEIGHT {
                    return Err(format!(
                        "split weight of '{}' must be 0-{MAX_WEIGHT}, got {}",
                        share.pool, share.weight
                    ));
                }
                if shares[..i].iter().any(|s| s.pool == share.pool) {
                    return Err(format!("split names pool '{}' twice", share.pool));
                }
            }
            if shares.iter().all(|s| s.weight == 0) {
                return Err("split: every weight is 0".into());
            }
            Ok(())
        }
        Action::Redirect(redirect) => check_redirect(redirect),
        Action::Respond(respond) => {
            if !(200..=599).contains(&respond.status) {
                return Err(format!("respond status must be 200-599, got {}", respond.status));
            }
            if respond.body.len() > MAX_RESPOND_BODY {
                return Err(format!(
                    "respond body must be at most {MAX_RESPOND_BODY} bytes, got {}",
                    respond.body.len()
                ));
            }
            Ok(())
        }
    }
}

fn check_redirect(redirect: &Redirect) -> Result<(), String> {
    if ![301, 302, 307, 308].contains(&redirect.status) {
        return Err(format!("redirect status must be 301, 302, 307 or 308, got {}", redirect.status));
    }
    if let Some(scheme) = &redirect.scheme {
        if scheme != "http" && scheme != "https" {
            return Err(format!("redirect scheme must be http or https, got '{scheme}'"));
        }
    }
    if let Some(host) = &redirect.host {
        let valid = !host.is_empty() && host.bytes().all(|b| b.is_ascii_graphic() && !b"/?#@\\".contains(&b));
        if !valid {
            return Err(format!("redirect host '{host}' must be a host name, with a port if any"));
        }
    }
    if let Some(path) = &redirect.path {
        if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) || path.contains('#') {
            return Err(format!("redirect path '{path}' must start with '/', printable ASCII without spaces or '#'"));
        }
    }
    if redirect.scheme.is_none() && redirect.host.is_none() && redirect.path.is_none() {
        return Err("redirect names no scheme, host or path: it would redirect to itself".into());
    }
    Ok(())
}

/// Checks a path rewrite against the route's path matcher: the prefix it strips or replaces
/// must be one every request it takes has.
pub(crate) fn check_rewrite(rewrite: &Rewrite, path: &PathMatch) -> Result<(), String> {
    match rewrite {
        Rewrite::Strip(prefix) => {
            check_canonical("strip_prefix", prefix)?;
            let always_under = match path {
                PathMatch::Exact(p) | PathMatch::Prefix(p) => is_under(p, prefix.trim_end_matches('/')),
                _ => false,
            };
            if !always_under || prefix == "/" {
                return Err(format!(
                    "strip_prefix '{prefix}' must be a path_prefix (or path) of the route itself or above it, other than '/'"
                ));
            }
            Ok(())
        }
        Rewrite::Add(prefix) => {
            check_canonical("add_prefix", prefix)?;
            if prefix == "/" {
                return Err("add_prefix '/' adds nothing".into());
            }
            Ok(())
        }
        Rewrite::Replace { to, .. } => {
            if !matches!(path, PathMatch::Prefix(_)) {
                return Err("replace_prefix replaces the route's path_prefix: set path_prefix".into());
            }
            check_canonical("replace_prefix", to)
        }
    }
}

/// Checks `request_headers` or `response_headers` (`key` names which).
pub(crate) fn check_edits(key: &str, edits: &HeaderEdits) -> Result<(), String> {
    let names = edits.set.keys().chain(edits.add.keys()).chain(edits.remove.iter());
    for name in names {
        if !is_token(name) {
            return Err(format!("{key}: '{name}' is not a field name"));
        }
        if PROXY_OWNED.iter().any(|owned| name.eq_ignore_ascii_case(owned)) {
            return Err(format!("{key}: '{name}' is the proxy's to set (message framing, hop by hop)"));
        }
    }
    for (name, value) in edits.set.iter().chain(edits.add.iter()) {
        if !value.bytes().all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic()) {
            return Err(format!("{key}: the value of '{name}' must be printable ASCII"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_checked() {
        assert!(check_action(&Action::Pool("api".into())).is_ok());
        assert!(check_action(&Action::Pool("a/b".into())).is_err());
        let share = |pool: &str, weight| SplitShare { pool: pool.into(), weight };
        assert!(check_action(&Action::Split(vec![share("a", 95), share("b", 5)])).is_ok());
        assert!(check_action(&Action::Split(vec![share("a", 0), share("b", 5)])).is_ok());
        assert!(check_action(&Action::Split(vec![])).is_err());
        assert!(check_action(&Action::Split(vec![share("a", 1), share("a", 1)])).unwrap_err().contains("twice"));
        assert!(check_action(&Action::Split(vec![share("a", 0)])).is_err());
        let redirect = |status, scheme: Option<&str>| {
            Action::Redirect(Redirect { status, scheme: scheme.map(Into::into), host: None, path: None })
        };
        assert!(check_action(&redirect(301, Some("https"))).is_ok());
        assert!(check_action(&redirect(303, Some("https"))).is_err());
        assert!(check_action(&redirect(301, Some("ftp"))).is_err());
        assert!(check_action(&redirect(301, None)).unwrap_err().contains("itself"));
        assert!(check_action(&Action::Respond(Respond { status: 403, body: "no".into() })).is_ok());
        assert!(check_action(&Action::Respond(Respond { status: 100, body: String::new() })).is_err());
    }

    #[test]
    fn a_strip_must_always_apply() {
        let under = PathMatch::Prefix("/api/v1".into());
        assert!(check_rewrite(&Rewrite::Strip("/api".into()), &under).is_ok());
        assert!(check_rewrite(&Rewrite::Strip("/api/".into()), &under).is_ok());
        assert!(check_rewrite(&Rewrite::Strip("/ap".into()), &under).is_err());
        assert!(check_rewrite(&Rewrite::Strip("/api".into()), &PathMatch::Any).is_err());
        assert!(check_rewrite(&Rewrite::Replace { from: String::new(), to: "/x".into() }, &PathMatch::Any).is_err());
        assert_eq!(Rewrite::Strip("/api/".into()).apply("/api/x"), "/x");
    }

    #[test]
    fn header_edits_leave_framing_to_the_proxy() {
        let mut edits = HeaderEdits::default();
        edits.set.insert("X-Env".into(), "prod".into());
        assert!(check_edits("request_headers", &edits).is_ok());
        edits.remove.push("Transfer-Encoding".into());
        assert!(check_edits("request_headers", &edits).unwrap_err().contains("proxy's"));
        let mut bad = HeaderEdits::default();
        bad.add.insert("X-A".into(), "a\r\nb".into());
        assert!(check_edits("response_headers", &bad).is_err());
    }
}
