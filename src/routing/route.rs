//! One route as built from its config: compiled matchers, its action, and how specific it is.

use super::action::{check_action, check_edits, check_rewrite, is_valid_name, Action, HeaderEdits, Overrides, Rewrite};
use super::conditions::{Conditions, HeaderTest, QueryTest};
use super::config::{HeaderMatchConfig, QueryMatchConfig, RouteConfig};
use super::host::HostPattern;
use super::path::{anchored, check_canonical, PathMatch, PathRegex};
use super::RouteError;

/// A route ready to match.
#[derive(Clone, Debug)]
pub struct Route {
    /// Its name.
    pub name: String,
    /// Its position in the config's list (0-based).
    pub position: usize,
    /// Host patterns, without repeats; empty: any host.
    pub hosts: Vec<HostPattern>,
    /// Path matcher.
    pub path: PathMatch,
    /// Methods, headers, query.
    pub conditions: Conditions,
    /// `priority`, 0 when not set.
    pub priority: i32,
    /// What it does.
    pub action: Action,
    /// How the upstream path is rewritten, if it is.
    pub rewrite: Option<Rewrite>,
    /// Edits of the request sent upstream.
    pub request_headers: HeaderEdits,
    /// Edits of the answer sent back.
    pub response_headers: HeaderEdits,
    /// Per-route settings.
    pub overrides: Overrides,
}

impl Route {
    /// Builds and checks one route (its name is checked for uniqueness by the table).
    pub fn build(config: &RouteConfig, position: usize) -> Result<Route, RouteError> {
        let fail = |why: String| RouteError::Invalid { route: config.name.clone(), why };
        if !is_valid_name(&config.name) {
            return Err(RouteError::Invalid {
                route: config.name.clone(),
                why: "a route name is 1-64 of A-Z a-z 0-9 _ . -".into(),
            });
        }
        let mut hosts = Vec::new();
        for text in &config.host {
            let pattern = HostPattern::parse(text).map_err(fail)?;
            if !hosts.contains(&pattern) {
                hosts.push(pattern);
            }
        }
        let path = build_path(config).map_err(fail)?;
        let conditions = build_conditions(config).map_err(fail)?;
        let action = match (&config.pool, &config.split, &config.redirect, &config.respond) {
            (Some(pool), None, None, None) => Action::Pool(pool.clone()),
            (None, Some(split), None, None) => Action::Split(split.clone()),
            (None, None, Some(redirect), None) => Action::Redirect(redirect.clone()),
            (None, None, None, Some(respond)) => Action::Respond(respond.clone()),
            _ => return Err(fail("needs exactly one of pool, split, redirect, respond".into())),
        };
        check_action(&action).map_err(fail)?;
        let rewrite = match (&config.strip_prefix, &config.add_prefix, &config.replace_prefix) {
            (None, None, None) => None,
            (Some(p), None, None) => Some(Rewrite::Strip(p.clone())),
            (None, Some(p), None) => Some(Rewrite::Add(p.clone())),
            (None, None, Some(to)) => {
                let from = match &path {
                    PathMatch::Prefix(prefix) => prefix.clone(),
                    _ => String::new(),
                };
                Some(Rewrite::Replace { from, to: to.clone() })
            }
            _ => return Err(fail("takes at most one of strip_prefix, add_prefix, replace_prefix".into())),
        };
        let forwards = matches!(action, Action::Pool(_) | Action::Split(_));
        if let Some(rewrite) = &rewrite {
            if !forwards {
                return Err(fail("a path rewrite goes with pool or split only".into()));
            }
            check_rewrite(rewrite, &path).map_err(fail)?;
        }
        let request_headers = config.request_headers.clone().unwrap_or_default();
        let response_headers = config.response_headers.clone().unwrap_or_default();
        if !forwards && config.request_headers.is_some() {
            return Err(fail("request_headers go with pool or split only".into()));
        }
        check_edits("request_headers", &request_headers).map_err(fail)?;
        check_edits("response_headers", &response_headers).map_err(fail)?;
        Ok(Route {
            name: config.name.clone(),
            position,
            hosts,
            path,
            conditions,
            priority: config.priority.unwrap_or(0),
            action,
            rewrite,
            request_headers,
            response_headers,
            overrides: config.overrides(),
        })
    }

    /// Whether a request matches every matcher (host canonical, see
    /// [`canonical_host`](super::canonical_host)).
    pub fn matches(&self, request: &super::RequestView<'_>) -> bool {
        let host_ok = self.hosts.is_empty() || request.host.is_some_and(|h| self.hosts.iter().any(|p| p.matches(h)));
        host_ok
            && self.path.matches(request.path)
            && self.conditions.matches(request.method, request.headers, request.query)
    }

    /// The pools its action names.
    pub fn pools(&self) -> Vec<&str> {
        match &self.action {
            Action::Pool(pool) => vec![pool.as_str()],
            Action::Split(shares) => shares.iter().map(|s| s.pool.as_str()).collect(),
            Action::Redirect(_) | Action::Respond(_) => Vec::new(),
        }
    }
}

fn build_path(config: &RouteConfig) -> Result<PathMatch, String> {
    match (&config.path, &config.path_prefix, &config.path_regex) {
        (None, None, None) => Ok(PathMatch::Any),
        (Some(path), None, None) => {
            check_canonical("path", path)?;
            Ok(PathMatch::Exact(path.clone()))
        }
        (None, Some(prefix), None) => {
            check_canonical("path_prefix", prefix)?;
            Ok(PathMatch::Prefix(prefix.clone()))
        }
        (None, None, Some(source)) => {
            Ok(PathMatch::Regex(PathRegex { source: source.clone(), regex: anchored(source)? }))
        }
        _ => Err("takes at most one of path, path_prefix, path_regex".into()),
    }
}

fn build_conditions(config: &RouteConfig) -> Result<Conditions, String> {
    let is_token =
        |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if let Some(method) = config.methods.iter().find(|m| !is_token(m)) {
        return Err(format!("method '{method}' is not a method name"));
    }
    let mut headers = Vec::new();
    for (name, test) in &config.headers {
        if !is_token(name) {
            return Err(format!("header '{name}' is not a field name"));
        }
        let test = match test {
            HeaderMatchConfig::Present => HeaderTest::Present,
            HeaderMatchConfig::Exact(value) => HeaderTest::Exact(value.clone()),
            HeaderMatchConfig::Regex(source) => HeaderTest::Regex(source.clone(), anchored(source)?),
        };
        headers.push((name.to_ascii_lowercase(), test));
    }
    let query = config
        .query
        .iter()
        .map(|(name, test)| {
            let test = match test {
                QueryMatchConfig::Present => QueryTest::Present,
                QueryMatchConfig::Equals(value) => QueryTest::Equals(value.clone()),
            };
            (name.clone(), test)
        })
        .collect();
    if config.query.keys().any(String::is_empty) {
        return Err("a query parameter name is empty".into());
    }
    let mut methods: Vec<String> = Vec::new();
    for method in &config.methods {
        if !methods.contains(method) {
            methods.push(method.clone());
        }
    }
    Ok(Conditions { methods, headers, query })
}
