//! Where the shared backend table lives: `etcd://HOST:PORT/PREFIX` (the `registry` setting).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// etcd's client port when the URL names none.
const DEFAULT_PORT: u16 = 2379;

/// An etcd endpoint and the key prefix under which the instances sharing it keep their backends.
///
/// ```
/// use lb_sync::config::RegistryUrl;
/// let url: RegistryUrl = "etcd://127.0.0.1:2379/lb-sync/prod".parse().unwrap();
/// assert_eq!((url.host.as_str(), url.port, url.prefix.as_str()), ("127.0.0.1", 2379, "/lb-sync/prod"));
/// assert_eq!(url.gateway(), "http://127.0.0.1:2379");
/// assert_eq!("etcd://etcd.internal/lb".parse::<RegistryUrl>().unwrap().port, 2379);
/// assert!("http://127.0.0.1:2379/lb".parse::<RegistryUrl>().is_err());
/// assert!("etcd://127.0.0.1:2379".parse::<RegistryUrl>().is_err(), "a prefix is required");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryUrl {
    /// etcd's host name or address (an IPv6 address without its brackets).
    pub host: String,
    /// etcd's client port. Default 2379.
    pub port: u16,
    /// The key prefix: starts with `/`, never ends with one.
    pub prefix: String,
}

impl RegistryUrl {
    /// The base URL of etcd's v3 JSON gateway (`http://HOST:PORT`).
    pub fn gateway(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for RegistryUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<RegistryUrl, String> {
        let bad = |why: &str| format!("registry '{text}': {why}; expected etcd://HOST:PORT/PREFIX");
        let rest = text.strip_prefix("etcd://").ok_or_else(|| bad("the scheme must be etcd://"))?;
        let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no key prefix"))?;
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, tail) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            (host, tail.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || "@?#".contains(c)) {
            return Err(bad("no host"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| bad("the port must be 1-65535"))?,
        };
        let prefix = format!("/{}", path.trim_end_matches('/'));
        let allowed = |c: char| c.is_ascii_alphanumeric() || "._~-/".contains(c);
        if prefix.len() < 2 || !prefix.chars().all(allowed) || prefix.contains("//") {
            return Err(bad("the prefix must be non-empty, of A-Z a-z 0-9 . _ ~ - and single '/'"));
        }
        Ok(RegistryUrl { host: host.to_string(), port, prefix })
    }
}

impl fmt::Display for RegistryUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "etcd://[{}]:{}{}", self.host, self.port, self.prefix)
        } else {
            write!(f, "etcd://{}:{}{}", self.host, self.port, self.prefix)
        }
    }
}

impl Serialize for RegistryUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RegistryUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RegistryUrl, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_print_back() {
        for (text, printed) in [
            ("etcd://127.0.0.1:2379/lb", "etcd://127.0.0.1:2379/lb"),
            ("etcd://[::1]:23790/a/b/", "etcd://[::1]:23790/a/b"),
            ("etcd://etcd/x", "etcd://etcd:2379/x"),
        ] {
            assert_eq!(text.parse::<RegistryUrl>().unwrap().to_string(), printed);
        }
        let v6: RegistryUrl = "etcd://[::1]:23790/a".parse().unwrap();
        assert_eq!((v6.host.as_str(), v6.gateway()), ("::1", "http://[::1]:23790".to_string()));
    }

    #[test]
    fn bad_urls_say_why() {
        for (text, why) in [
            ("127.0.0.1:2379/lb", "scheme"),
            ("etcd://127.0.0.1:2379", "no key prefix"),
            ("etcd://127.0.0.1:2379/", "prefix must be non-empty"),
            ("etcd://:2379/lb", "no host"),
            ("etcd://h:0/lb", "port"),
            ("etcd://h:99999/lb", "port"),
            ("etcd://h/a b", "prefix"),
            ("etcd://h/a//b", "prefix"),
            ("etcd://[::1/lb", "unclosed"),
        ] {
            let error = text.parse::<RegistryUrl>().unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
        }
    }
}
