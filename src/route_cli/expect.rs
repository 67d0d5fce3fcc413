//! `lb-sync route --expect cases.json`: a table of requests and what each must get (route,
//! pool, path upstream, lb-sync's own status), checked against the configuration, one line per
//! case, for users' CI.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::trace::{check_request, parse_header, Fate, Probe, Trace, Tracer};

/// One case as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// The method.
    pub method: String,
    /// As on the command line: `http://HOST/PATH`, `https://...` or `/PATH`.
    pub url: String,
    /// `{"Name": "value"}` or `["Name: value", ...]` (a list may repeat a name).
    #[serde(default, deserialize_with = "headers")]
    pub headers: Vec<(String, String)>,
    /// The client's address (default 127.0.0.1).
    #[serde(default)]
    pub client: Option<IpAddr>,
    /// The route that must take it; `null`: no route.
    #[serde(default, deserialize_with = "present")]
    pub route: Option<Option<String>>,
    /// The pool it must go to.
    #[serde(default)]
    pub pool: Option<String>,
    /// The path and query sent upstream.
    #[serde(default)]
    pub upstream_path: Option<String>,
    /// The status lb-sync answers with itself (400, 404, a redirect's, a respond's).
    #[serde(default)]
    pub status: Option<u16>,
}

/// Tells a `null` apart from an absent key.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

fn headers<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<(String, String)>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Map(BTreeMap<String, String>),
        List(Vec<String>),
    }
    match Written::deserialize(deserializer)? {
        Written::Map(map) => Ok(map.into_iter().collect()),
        Written::List(list) => list.iter().map(|h| parse_header(h).map_err(D::Error::custom)).collect(),
    }
}

impl Case {
    /// The request it describes.
    pub fn probe(&self) -> Probe {
        Probe {
            method: self.method.clone(),
            url: self.url.clone(),
            headers: self.headers.clone(),
            client: self.client.unwrap_or(IpAddr::from([127, 0, 0, 1])),
        }
    }

    /// What differs between this case and `trace`, one phrase each; empty when it passes.
    pub fn misses(&self, trace: &Trace) -> Vec<String> {
        let mut misses = Vec::new();
        let sent = match &trace.fate {
            Fate::Pool(sent) => Some(sent),
            _ => None,
        };
        let show = |value: Option<&str>| value.map_or("none".to_string(), |v| format!("'{v}'"));
        if let Some(route) = &self.route {
            if *route != trace.route {
                misses.push(format!("route {} (expected {})", show(trace.route.as_deref()), show(route.as_deref())));
            }
        }
        if let Some(pool) = &self.pool {
            let got = sent.map(|s| s.pool.as_str());
            if got != Some(pool.as_str()) {
                misses.push(format!("pool {} (expected '{pool}')", show(got)));
            }
        }
        if let Some(path) = &self.upstream_path {
            let got = sent.map(|s| s.upstream.as_str());
            if got != Some(path.as_str()) {
                misses.push(format!("upstream_path {} (expected '{path}')", show(got)));
            }
        }
        if let Some(status) = self.status {
            if trace.own_status() != Some(status) {
                let got = trace
                    .own_status()
                    .map_or("none of lb-sync's own (a backend answers)".to_string(), |s| s.to_string());
                misses.push(format!("status {got} (expected {status})"));
            }
        }
        misses
    }
}

/// Reads a cases file: a JSON list of cases, each checking something. `Err`: why it is bad.
pub fn read_cases(text: &str) -> Result<Vec<Case>, String> {
    let cases: Vec<Case> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    for (i, case) in cases.iter().enumerate() {
        check_request(&case.method, &case.url).map_err(|e| format!("case {}: {e}", i + 1))?;
        if case.route.is_none() && case.pool.is_none() && case.upstream_path.is_none() && case.status.is_none() {
            return Err(format!("case {}: checks nothing: give route, pool, upstream_path or status", i + 1));
        }
    }
    Ok(cases)
}

/// What the cases file's check printed, and whether every case passed.
pub fn check(tracer: &Tracer, cases: &[Case]) -> (String, bool) {
    let mut out = String::new();
    let mut missed = 0;
    for case in cases {
        let trace = tracer.trace(&case.probe());
        let misses = case.misses(&trace);
        let said = summary(&trace);
        if misses.is_empty() {
            out.push_str(&format!("ok    {} {}: {said}\n", case.method, case.url));
        } else {
            missed += 1;
            out.push_str(&format!("MISS  {} {}: {}\n", case.method, case.url, misses.join("; ")));
        }
    }
    out.push_str(&format!("{} case(s), {} passed, {missed} missed\n", cases.len(), cases.len() - missed));
    (out, missed == 0)
}

/// What a request gets, in a few words: `route api, pool api, upstream /users`.
fn summary(trace: &Trace) -> String {
    let route = trace.route.as_deref().map_or("no route".to_string(), |r| format!("route {r}"));
    match &trace.fate {
        Fate::Pool(sent) => format!("{route}, pool {}, upstream {}", sent.pool, sent.upstream),
        Fate::Redirect { status, location } => format!("{route}, {status} to {location}"),
        Fate::Respond { status, .. } => format!("{route}, {status}"),
        Fate::NotFound => "no route, 404".to_string(),
        Fate::Refused { status, why } => format!("{status} {why}"),
        Fate::Admin => "the management API".to_string(),
    }
}
