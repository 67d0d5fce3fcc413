//! Every setting, once: the list below declares each one's config-file key, type and default,
//! the group and field it has in [`Config`], its valid range, whether a reload may change it,
//! its command-line flag and its doc line; everything else reads the list.
//!
//! The file keeps one flat object of keys (old files load unchanged); the program reads
//! settings grouped as they are used ([`Config::pool`], [`Config::health`], ...). The list
//! generates both: [`ConfigFile`], the file's flat form (what serde reads and writes, what
//! `/lb/config` shows, what ranges are checked on), and the typed groups, with one conversion
//! each way. `serde(flatten)` would give groups straight from the file but does not work with
//! `deny_unknown_fields`, which a typo in a key must hit.
//!
//! What reads the list:
//! - [`ConfigFile`] and its [`Default`]: the keys, types and defaults of the file;
//! - the groups of [`Config`] and the conversions between the two forms;
//! - [`RANGES`](super::RANGES) and the range check of [`ConfigFile::validate`];
//! - [`PoolConfig`](super::PoolConfig) and [`POOL_SETTINGS`](super::POOL_SETTINGS): a named pool
//!   may set exactly the settings of the per-pool groups (`pool`, `health`, `breaker`);
//! - [`FLAGS`] and [`ConfigFile::set_flag`]: how `lb-sync`'s flags apply (a test in the binary
//!   holds its flags to this list);
//! - a reload: the settings marked `restart` keep their running value until a restart
//!   ([`Config::keep_restart_only`]);
//! - `/lb/config`: the flat form, with the settings marked `shown` replaced by what it says;
//! - [`SETTINGS`]: the list itself, for documentation.
//!
//! A row reads `key: FileType => field: Type = default; reload[, range R][, flag NAME][, shown "TEXT"];`
//! after its doc lines: the default is in the file's form, `reload` is `live` (a reload applies
//! it) or `restart` (a reload keeps the running value and says so).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ranges::Unit::{Bytes, Count, Ratio, Seconds};
use super::ranges::{or_off, span, Range, RangeValue, DAY, GIB, TIB};
use super::{invalid, BackendConfig, ConfigError, RegistryUrl, TlsCertificateFiles, UpstreamReuse};
use crate::balance::AlgorithmKind;
use crate::client_ip::Cidr;
use crate::logging::AccessFormat;
use crate::routing::RouteConfig;
use crate::server::{BodyBuffering, Limits};
use crate::traffic::ClientLimiter;

/// How a setting's value in the file becomes its value in [`Config`] and back: the same value,
/// or seconds (a float, or whole seconds) as a [`Duration`], `None` where 0 means off.
///
/// ```
/// use std::time::Duration;
/// use lb_sync::config::Setting;
/// assert_eq!(Duration::from_file(&0.25), Ok(Duration::from_millis(250)));
/// assert_eq!(<Option<Duration>>::from_file(&0.0), Ok(None));
/// assert_eq!(Duration::from_file(&-1.0), Err("-1".to_string()));
/// assert_eq!(Setting::<u64>::to_file(&Duration::from_secs(60)), 60);
/// ```
pub trait Setting<File>: Sized {
    /// The value in force for the file's `value`; `Err` with the value as written if it cannot
    /// be one (a negative duration).
    fn from_file(value: &File) -> Result<Self, String>;
    /// The value the file would have to say.
    fn to_file(&self) -> File;
}

impl<T: Clone> Setting<T> for T {
    fn from_file(value: &T) -> Result<T, String> {
        Ok(value.clone())
    }

    fn to_file(&self) -> T {
        self.clone()
    }
}

impl Setting<f64> for Duration {
    fn from_file(seconds: &f64) -> Result<Duration, String> {
        Duration::try_from_secs_f64(*seconds).map_err(|_| seconds.to_string())
    }

    fn to_file(&self) -> f64 {
        self.as_secs_f64()
    }
}

/// Seconds where 0 turns the thing off.
impl Setting<f64> for Option<Duration> {
    fn from_file(seconds: &f64) -> Result<Option<Duration>, String> {
        if *seconds == 0.0 {
            Ok(None)
        } else {
            Duration::from_file(seconds).map(Some)
        }
    }

    fn to_file(&self) -> f64 {
        self.map_or(0.0, |duration| duration.as_secs_f64())
    }
}

/// Whole seconds.
impl Setting<u64> for Duration {
    fn from_file(seconds: &u64) -> Result<Duration, String> {
        Ok(Duration::from_secs(*seconds))
    }

    fn to_file(&self) -> u64 {
        self.as_secs()
    }
}

/// One setting as the list declares it (for documentation: issue 28 generates the README's
/// reference from [`SETTINGS`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SettingInfo {
    /// The config-file key.
    pub key: &'static str,
    /// The group of [`Config`] it belongs to.
    pub group: &'static str,
    /// Its field in that group.
    pub field: &'static str,
    /// Its type in the file, as written in the list.
    pub file_type: &'static str,
    /// Its doc lines.
    pub doc: &'static str,
    /// Its valid range, if it is a number with one.
    pub range: Option<Range>,
    /// Whether a named pool may set it.
    pub per_pool: bool,
    /// Whether a reload applies it (else it keeps its running value until a restart).
    pub reloadable: bool,
    /// Its `lb-sync` flag, `--` and dashes left out (`max_tries` is `--max-tries`).
    pub flag: Option<&'static str>,
}

/// `Some` of what it is given, or `None` when given nothing.
macro_rules! some_or_none {
    () => {
        None
    };
    ($value:expr) => {
        Some($value)
    };
}

impl SettingInfo {
    /// The setting's default, as the file writes it.
    ///
    /// ```
    /// let timeout = lb_sync::config::SETTINGS.iter().find(|s| s.key == "request_timeout").unwrap();
    /// assert_eq!((timeout.group, timeout.field, timeout.default_value()), ("pool", "request_timeout", serde_json::json!(30.0)));
    /// ```
    pub fn default_value(&self) -> serde_json::Value {
        serde_json::to_value(ConfigFile::default()).map_or(serde_json::Value::Null, |file| file[self.key].clone())
    }
}

/// Whether a row's reload mark is `live`.
macro_rules! is_live {
    (live) => {
        true
    };
    (restart) => {
        false
    };
}

/// Whether a row is marked `restart`: expands to its body only then.
macro_rules! if_restart {
    (restart $($body:tt)*) => { $($body)* };
    (live $($body:tt)*) => {};
}

/// Declares everything listed in the module doc from the list of settings.
macro_rules! settings {
    (
        per_pool {$(
            $(#[doc = $pgdoc:literal])*
            $pgroup:ident: $PGroup:ident {$(
                $(#[doc = $pdoc:literal])*
                $pkey:ident: $pfile:ty => $pfield:ident: $ptyped:ty = $pdefault:expr;
                $preload:ident $(, range $prange:expr)? $(, flag $pflag:ident)? $(, shown $pshown:literal)?;
            )*}
        )*}
        per_instance {$(
            $(#[doc = $igdoc:literal])*
            $igroup:ident: $IGroup:ident {$(
                $(#[doc = $idoc:literal])*
                $ikey:ident: $ifile:ty => $ifield:ident: $ityped:ty = $idefault:expr;
                $ireload:ident $(, range $irange:expr)? $(, flag $iflag:ident)? $(, shown $ishown:literal)?;
            )*}
        )*}
    ) => {
        /// The config file's flat object: every key, with its default. What serde reads (an
        /// unknown key is an error: a typo must not be ignored), what ranges are checked on and
        /// what `/lb/config` shows; [`Config`] is the same settings grouped.
        ///
        /// ```
        /// use lb_sync::config::ConfigFile;
        /// let file: ConfigFile = serde_json::from_str(r#"{"port": 9090, "max_tries": 2}"#).unwrap();
        /// assert_eq!((file.port, file.max_tries, file.threads), (9090, 2, 256));
        /// ```
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct ConfigFile {
            /// The backends (of the pool `default`). Default: the seed's `localhost:8001`
            /// (weight 1), `:8002` (2), `:8003` (1).
            pub backends: Vec<BackendConfig>,
            /// Named pools of backends, each with the per-pool settings it changes (see
            /// [`PoolConfig`]); the top-level `backends` and settings are the pool `default`.
            /// Default none. Left out of the JSON when empty.
            #[serde(deserialize_with = "super::pools::by_name", skip_serializing_if = "BTreeMap::is_empty")]
            pub pools: BTreeMap<String, PoolConfig>,
            $($($(#[doc = $pdoc])* pub $pkey: $pfile,)*)*
            $($($(#[doc = $idoc])* pub $ikey: $ifile,)*)*
            /// Routes by host, path, method, headers and query (README "Routes"), checked whole
            /// at load and on reload: a route that is wrong, or two that tie, refuse the file.
            /// Default none.
            #[serde(deserialize_with = "crate::routing::deserialize_routes", skip_serializing_if = "Vec::is_empty")]
            pub routes: Vec<RouteConfig>,
        }

        impl Default for ConfigFile {
            fn default() -> ConfigFile {
                ConfigFile {
                    backends: super::seed_backends(),
                    pools: BTreeMap::new(),
                    $($($pkey: $pdefault,)*)*
                    $($($ikey: $idefault,)*)*
                    routes: Vec::new(),
                }
            }
        }

        $(
            $(#[doc = $pgdoc])*
            ///
            /// A named pool may set each of these for itself (see [`PoolConfig`]).
            #[derive(Clone, Debug, PartialEq)]
            pub struct $PGroup {$(
                $(#[doc = $pdoc])*
                pub $pfield: $ptyped,
            )*}
        )*
        $(
            $(#[doc = $igdoc])*
            #[derive(Clone, Debug, PartialEq)]
            pub struct $IGroup {$(
                $(#[doc = $idoc])*
                pub $ifield: $ityped,
            )*}
        )*

        /// Everything the balancer needs to run, grouped as it is used. The config file is
        /// [`ConfigFile`]'s flat keys (serde reads and writes that form); see the module doc.
        ///
        /// ```
        /// let config: lb_sync::config::Config = serde_json::from_str(r#"{"port": 9090, "algorithm": "ip_hash"}"#).unwrap();
        /// assert_eq!(config.listener.port, 9090);
        /// assert_eq!(config.backends.len(), 3, "the seed's three backends by default");
        /// ```
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(try_from = "ConfigFile", into = "ConfigFile")]
        pub struct Config {
            /// The backends of the pool `default`. Default: the seed's three.
            pub backends: Vec<BackendConfig>,
            /// Named pools (see [`PoolConfig`]). Default none.
            pub pools: BTreeMap<String, PoolConfig>,
            $($(#[doc = $pgdoc])* pub $pgroup: $PGroup,)*
            $($(#[doc = $igdoc])* pub $igroup: $IGroup,)*
            /// The routes. Default none.
            pub routes: Vec<RouteConfig>,
        }

        impl TryFrom<ConfigFile> for Config {
            type Error = ConfigError;

            /// The file's values as the program uses them; a value no setting can hold (a
            /// negative duration) is refused with its range.
            fn try_from(file: ConfigFile) -> Result<Config, ConfigError> {
                Ok(Config {
                    $($pgroup: $PGroup {$(
                        $pfield: <$ptyped as Setting<$pfile>>::from_file(&file.$pkey)
                            .map_err(|shown| unrepresentable(stringify!($pkey), &shown))?,
                    )*},)*
                    $($igroup: $IGroup {$(
                        $ifield: <$ityped as Setting<$ifile>>::from_file(&file.$ikey)
                            .map_err(|shown| unrepresentable(stringify!($ikey), &shown))?,
                    )*},)*
                    backends: file.backends,
                    pools: file.pools,
                    routes: file.routes,
                })
            }
        }

        impl From<&Config> for ConfigFile {
            fn from(config: &Config) -> ConfigFile {
                ConfigFile {
                    backends: config.backends.clone(),
                    pools: config.pools.clone(),
                    $($($pkey: <$ptyped as Setting<$pfile>>::to_file(&config.$pgroup.$pfield),)*)*
                    $($($ikey: <$ityped as Setting<$ifile>>::to_file(&config.$igroup.$ifield),)*)*
                    routes: config.routes.clone(),
                }
            }
        }

        impl From<Config> for ConfigFile {
            fn from(config: Config) -> ConfigFile {
                ConfigFile::from(&config)
            }
        }

        impl Default for Config {
            fn default() -> Config {
                Config::try_from(ConfigFile::default()).expect("the defaults are valid")
            }
        }

        /// Every numeric setting's range, and a backend's `weight`. Settings not listed here
        /// are checked where they are parsed (ports by their type, rates and bursts in
        /// [`ConfigFile::validate`], statuses, paths, names).
        pub const RANGES: &[Range] = &[
            $($($(Range { key: stringify!($pkey), ..$prange },)?)*)*
            $($($(Range { key: stringify!($ikey), ..$irange },)?)*)*
            Range { key: "weight", ..span(1.0, 1_000_000.0, Count) },
        ];

        /// Every setting of the list, in its order.
        pub const SETTINGS: &[SettingInfo] = &[
            $($(SettingInfo {
                key: stringify!($pkey),
                group: stringify!($pgroup),
                field: stringify!($pfield),
                file_type: stringify!($pfile),
                doc: concat!($($pdoc, "\n"),*),
                range: some_or_none!($(Range { key: stringify!($pkey), ..$prange })?),
                per_pool: true,
                reloadable: is_live!($preload),
                flag: some_or_none!($(stringify!($pflag))?),
            },)*)*
            $($(SettingInfo {
                key: stringify!($ikey),
                group: stringify!($igroup),
                field: stringify!($ifield),
                file_type: stringify!($ifile),
                doc: concat!($($idoc, "\n"),*),
                range: some_or_none!($(Range { key: stringify!($ikey), ..$irange })?),
                per_pool: false,
                reloadable: is_live!($ireload),
                flag: some_or_none!($(stringify!($iflag))?),
            },)*)*
        ];

        /// The keys a pool may set besides `backends`: the settings of the per-pool groups.
        pub const POOL_SETTINGS: &[&str] = &[$($(stringify!($pkey)),*),*];

        /// Each `lb-sync` flag that sets a setting: (flag, key), the flag's dashes as
        /// underscores.
        pub const FLAGS: &[(&str, &str)] = &[
            $($($((stringify!($pflag), stringify!($pkey)),)?)*)*
            $($($((stringify!($iflag), stringify!($ikey)),)?)*)*
        ];

        /// The settings `/lb/config` shows as a fixed text when they are set (secrets): (key, text).
        pub const SHOWN_AS: &[(&str, &str)] = &[
            $($($((stringify!($pkey), $pshown),)?)*)*
            $($($((stringify!($ikey), $ishown),)?)*)*
        ];

        impl ConfigFile {
            /// Checks every numeric setting against its range: one line naming the key, the
            /// range and the value.
            pub(super) fn check_ranges(&self) -> Result<(), ConfigError> {
                $($($(RangeValue::check(&self.$pkey, &Range { key: stringify!($pkey), ..$prange })?;)?)*)*
                $($($(RangeValue::check(&self.$ikey, &Range { key: stringify!($ikey), ..$irange })?;)?)*)*
                Ok(())
            }

            /// Sets the setting of `flag` (as in [`FLAGS`]) to `value`, given as JSON of the
            /// flag's type.
            ///
            /// ```
            /// let mut file = lb_sync::config::ConfigFile::default();
            /// file.set_flag("max_tries", serde_json::json!(5)).unwrap();
            /// file.set_flag("trusted_proxy", serde_json::json!(["10.0.0.0/8"])).unwrap();
            /// assert_eq!((file.max_tries, file.trusted_proxies.len()), (5, 1));
            /// assert!(file.set_flag("colour", serde_json::json!(1)).is_err());
            /// ```
            pub fn set_flag(&mut self, flag: &str, value: serde_json::Value) -> Result<(), String> {
                match flag {
                    $($($(stringify!($pflag) => self.$pkey = from_flag(value)?,)?)*)*
                    $($($(stringify!($iflag) => self.$ikey = from_flag(value)?,)?)*)*
                    other => return Err(format!("--{} sets no setting", other.replace('_', "-"))),
                }
                Ok(())
            }
        }

        /// One named pool as configured: its backends (required, at least one) and the per-pool
        /// settings it changes; every other one is the top-level value.
        ///
        /// ```
        /// use lb_sync::config::PoolConfig;
        /// let pool: PoolConfig = serde_json::from_str(
        ///     r#"{"backends": [{"host": "127.0.0.1", "port": 9001}], "algorithm": "least_connections"}"#,
        /// ).unwrap();
        /// assert_eq!((pool.backends.len(), pool.max_tries), (1, None));
        /// ```
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct PoolConfig {
            /// The pool's backends, as the top-level `backends` (ids default to `backend<N>` by
            /// position in the pool).
            pub backends: Vec<BackendConfig>,
            $($(
                #[doc = concat!("Overrides the top-level `", stringify!($pkey), "` for this pool.")]
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $pkey: Option<$pfile>,
            )*)*
        }

        impl PoolConfig {
            /// `top` with this pool's backends and settings: the pool's settings in force, in the
            /// file's form.
            pub(super) fn lay_over(&self, top: &ConfigFile) -> ConfigFile {
                let mut file =
                    ConfigFile { backends: self.backends.clone(), pools: BTreeMap::new(), routes: Vec::new(), ..top.clone() };
                $($(
                    if let Some(value) = &self.$pkey {
                        file.$pkey = value.clone();
                    }
                )*)*
                file
            }
        }

        impl Config {
            /// Puts back into `next` the running value of each setting a reload cannot change
            /// (those the list marks `restart`), and names those that differed.
            pub fn keep_restart_only(next: &mut Config, running: &Config) -> Vec<String> {
                let mut kept = Vec::new();
                $($(if_restart! { $preload
                    if next.$pgroup.$pfield != running.$pgroup.$pfield {
                        kept.push(stringify!($pkey).to_string());
                        next.$pgroup.$pfield = running.$pgroup.$pfield.clone();
                    }
                })*)*
                $($(if_restart! { $ireload
                    if next.$igroup.$ifield != running.$igroup.$ifield {
                        kept.push(stringify!($ikey).to_string());
                        next.$igroup.$ifield = running.$igroup.$ifield.clone();
                    }
                })*)*
                kept
            }
        }

    };
}
/// A flag's value as its setting's type. JSON has no NaN or infinity: a float flag gives them
/// as text, read back here as the float they are (validation then refuses them).
fn from_flag<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
    use serde::de::IntoDeserializer;
    let not_finite = value.as_str().and_then(|text| text.parse::<f64>().ok()).filter(|number| !number.is_finite());
    match serde_json::from_value(value) {
        Ok(typed) => Ok(typed),
        Err(error) => match not_finite {
            Some(number) => {
                T::deserialize(number.into_deserializer()).map_err(|e: serde::de::value::Error| e.to_string())
            }
            None => Err(error.to_string()),
        },
    }
}

/// A file value that no setting can hold: said as its range says it.
fn unrepresentable(key: &'static str, shown: &str) -> ConfigError {
    match RANGES.iter().find(|r| r.key == key) {
        Some(range) => invalid(key, format!("{key} must be {}, got {shown}", range.describe())),
        None => invalid(key, format!("{key}: {shown} is not a valid value")),
    }
}

settings! {
    per_pool {
        /// How a pool balances and forwards: the algorithm, retries, backend timeouts and caps,
        /// upstream keep-alive, slow start and sticky sessions.
        pool: PoolSettings {
            /// Selection algorithm. Default `round_robin` (the seed's).
            algorithm: AlgorithmKind => algorithm: AlgorithmKind = AlgorithmKind::RoundRobin; live, flag algorithm;
            /// Most backends tried for one request (1 = no retry). Default 3.
            max_tries: usize => max_tries: usize = 3; live, range span(1.0, 100.0, Count), flag max_tries;
            /// Retries allowed as a share of recent requests (over 10 s windows). Default 0.2 (Envoy's
            /// retry budget of 20 %).
            retry_budget_ratio: f64 => retry_budget_ratio: f64 = 0.2; live, range span(0.0, 10.0, Ratio);
            /// Retries always allowed per window, whatever the ratio. Default 10.
            retry_budget_min: u64 => retry_budget_min: u64 = 10; live, range span(0.0, 1_000_000.0, Count);
            /// An idempotent request whose body is larger than this is not sent again after it reached
            /// a backend (every body is buffered, so this bounds the upload a retry repeats); a request
            /// that never left (connection refused) is always retried. Default 64 KiB.
            retry_body_max_bytes: u64 => retry_body_max_bytes: u64 = 64 * 1024; live, range span(0.0, GIB, Bytes);
            /// Seconds a backend may take to answer (and between body reads), then `504`. Default 30.
            request_timeout: f64 => request_timeout: Duration = 30.0; live, range span(0.001, DAY, Seconds), flag request_timeout;
            /// Seconds to connect to a backend before trying the next. Default 5.
            connect_timeout: f64 => connect_timeout: Duration = 5.0; live, range span(0.001, DAY, Seconds), flag connect_timeout;
            /// Seconds over which a recovered backend's share ramps from 10 % to 100 %. Default 10;
            /// 0 turns slow start off.
            slow_start: f64 => slow_start: Option<Duration> = 10.0; live, range span(0.0, DAY, Seconds), flag slow_start;
            /// When no backend is usable, try every enabled one anyway instead of answering `503`
            /// (Envoy's panic mode). Default false.
            panic_mode: bool => panic_mode: bool = false; live, flag panic_mode;
            /// Seconds over which a backend's response-time estimate decays (peak_ewma): about how far
            /// back its answers count, and how soon a backend avoided for being slow is tried again.
            /// Default 10 (Finagle's and Linkerd's).
            peak_ewma_window: f64 => peak_ewma_window: Duration = crate::balance::peak_ewma::DEFAULT_WINDOW.as_secs_f64(); live, range span(0.001, 3600.0, Seconds), flag peak_ewma_window;
            /// Most requests one backend is sent at once (HAProxy's per-server `maxconn`), so a
            /// blackholed backend cannot take every worker. A request that finds every candidate at its
            /// cap waits up to `backend_queue_timeout`, then gets `503`. Default: three quarters of
            /// `threads`.
            backend_max_connections: Option<usize> => backend_max_connections: Option<usize> = None; live, range span(1.0, 1_000_000.0, Count);
            /// Seconds a request may wait for a backend connection slot (HAProxy's `timeout queue`).
            /// Default 5.
            backend_queue_timeout: f64 => backend_queue_timeout: Duration = 5.0; live, range span(0.0, DAY, Seconds);
            /// Idle connections kept open to each backend for later requests (nginx's upstream
            /// `keepalive`); beyond it the least recently used is closed, and 0 closes each connection
            /// after its answer. Default: `threads` (every worker can keep one to each backend; the
            /// most recently used is taken first, so the surplus of a burst ages out).
            upstream_keepalive: Option<usize> => upstream_keepalive: Option<usize> = None; live, range span(0.0, 1_000_000.0, Count);
            /// Which requests may reuse an idle backend connection: `safe` (default, HAProxy's): a
            /// client connection's first request goes on a backend connection of its own, so a
            /// backend's unasked-for answer on a pooled connection reaches no newcomer; `always`
            /// (nginx's): any request.
            upstream_reuse: UpstreamReuse => upstream_reuse: UpstreamReuse = UpstreamReuse::Safe; live, flag upstream_reuse;
            /// Seconds an idle backend connection is kept (nginx's upstream `keepalive_timeout`).
            /// Default 4: under the 5 s keep-alive of common backends (Node's), so a connection is
            /// not reused just as its backend closes it.
            upstream_keepalive_timeout: f64 => upstream_keepalive_timeout: Duration = 4.0; live, range span(0.001, DAY, Seconds);
            /// Name of the sticky-session cookie; set, it turns sticky sessions on for every
            /// algorithm. Default unset: off.
            sticky_cookie: Option<String> => sticky_cookie: Option<String> = None; live, flag sticky_cookie;
            /// Key of the sticky cookie's HMAC: with it, a client cannot forge a cookie that picks its
            /// backend. Default unset (a fixed public key: opaque, not unforgeable).
            sticky_secret: Option<String> => sticky_secret: Option<String> = None; live, flag sticky_secret, shown "(set)";
            /// Seconds a sticky session lasts: the `Max-Age` of the sticky cookie, counted from when it
            /// was set. Default 3600 (the seed's); 0 makes it a browser-session cookie (no `Max-Age`).
            session_timeout: u64 => session_timeout: Duration = 3600; live, range span(0.0, 34_560_000.0, Seconds), flag session_timeout;
        }
        /// Active health checks of a pool's backends.
        health: HealthSettings {
            /// Seconds between active health checks of a backend (±10 % jitter). Default 30 (the
            /// seed's). 0 turns active checks off.
            health_check_interval: f64 => interval: Option<Duration> = 30.0; live, range or_off(0.01, DAY, Seconds), flag health_check_interval;
            /// Seconds between health checks of a backend not known to be up: not probed yet, down, a
            /// failed probe since its last verdict, its breaker open or half-open, or traffic could not
            /// connect to it since its last probe (then the next probe is at most this long after the
            /// previous one, so at once after a quiet spell). Default 1 (HAProxy's `fastinter` and
            /// `downinter` in one); never slower than `health_check_interval`.
            health_check_fast_interval: f64 => fast_interval: Duration = 1.0; live, range span(0.01, DAY, Seconds), flag health_check_fast_interval;
            /// Path of the health check (`GET`). Default `/health` (what lb-backend answers).
            health_check_path: String => path: String = "/health".into(); live, flag health_check_path;
            /// Seconds a health probe may take (connect and status line). Default 2.
            health_check_timeout: f64 => timeout: Duration = 2.0; live, range span(0.001, DAY, Seconds), flag health_check_timeout;
            /// Good probes in a row that bring a down backend back. Default 2 (HAProxy's `rise`).
            health_check_rise: u32 => rise: u32 = 2; live, range span(1.0, 1000.0, Count), flag health_check_rise;
            /// Failed probes in a row that take an up backend down. Default 3 (HAProxy's `fall`).
            health_check_fall: u32 => fall: u32 = 3; live, range span(1.0, 1000.0, Count), flag health_check_fall;
            /// Statuses a probe accepts as healthy, `LOW-HIGH`. Default `200-399` (HAProxy's).
            health_check_status: String => status: String = "200-399".into(); live;
        }
        /// Each backend's circuit breaker.
        breaker: BreakerSettings {
            /// Consecutive failures (connect errors, timeouts; 5xx with `breaker_on_5xx`) that open a
            /// backend's circuit breaker. Default 5.
            breaker_consecutive_failures: u32 => consecutive_failures: u32 = 5; live, range span(1.0, 1_000_000.0, Count), flag breaker_consecutive_failures;
            /// Failure ratio over a 10 s window that opens it, after 20 requests. Default 0.5.
            breaker_failure_ratio: f64 => failure_ratio: f64 = 0.5; live, range span(0.0, 1.0, Ratio);
            /// Seconds a breaker stays open after its first trip; doubles on each failed trial, up to
            /// 60 s. Default 5.
            breaker_cooldown: f64 => cooldown: Duration = 5.0; live, range span(0.001, DAY, Seconds), flag breaker_cooldown;
            /// Trial requests a half-open breaker lets through; all must succeed to close it. Default 3.
            breaker_half_open_trials: u32 => half_open_trials: u32 = 3; live, range span(1.0, 1000.0, Count);
            /// Count backend 5xx answers as breaker failures. Default false (a 500 is still an answer).
            breaker_on_5xx: bool => on_5xx: bool = false; live, flag breaker_on_5xx;
        }
    }
    per_instance {
        /// The client side: where lb-sync listens, its workers, the front end's timeouts, how it
        /// reads paths and headers, and how it buffers request bodies.
        listener: ListenerSettings {
            /// Address to listen on. Default `0.0.0.0` (the seed's).
            host: IpAddr => host: IpAddr = IpAddr::from([0, 0, 0, 0]); restart, flag host;
            /// Port to listen on. Default 8080.
            port: u16 => port: u16 = 8080; restart, flag port;
            /// Forwarding worker threads: each in-flight request holds one while its backend works
            /// (never while a client sends or reads: the poller does that). A worker costs a small
            /// stack, so the default is generous: 256 (Apache's event MPM defaults to 400), and 100
            /// slow backend requests in flight delay nobody else.
            threads: usize => threads: usize = 256; restart, range span(1.0, 10_000.0, Count), flag threads;
            /// Poller threads: each accepts on its own listening socket (the kernel spreads new
            /// connections over them), runs the TLS handshakes, reads the requests and writes the
            /// slow answers of the connections it accepted. Default: one per CPU this process may
            /// run on, at most 16; 1 gives one poller for everything.
            pollers: Option<usize> => pollers: Option<usize> = None; restart, range span(1.0, 64.0, Count), flag pollers;
            /// Requests that may wait for a free worker; more get `503` + `Retry-After`. Default 1024.
            queue_capacity: usize => queue_capacity: usize = 1024; live, range span(1.0, 1_000_000.0, Count);
            /// Most open client connections. Default 10 000.
            max_connections: usize => max_connections: usize = Limits::default().max_connections; live, range span(1.0, 1_000_000.0, Count);
            /// Seconds for a client to send a complete request head (`408` after). Default 10.
            client_header_timeout: u64 => client_header_timeout: Duration = Limits::default().head_timeout.as_secs(); live, range span(1.0, DAY, Seconds);
            /// Seconds an idle keep-alive client connection is kept. Default 60.
            keep_alive_timeout: u64 => keep_alive_timeout: Duration = Limits::default().keep_alive_timeout.as_secs(); live, range span(1.0, DAY, Seconds);
            /// Seconds without progress reading a client body or writing to a client. Default 60.
            client_io_timeout: u64 => client_io_timeout: Duration = Limits::default().io_timeout.as_secs(); live, range span(1.0, DAY, Seconds);
            /// Seconds a stop (SIGTERM, SIGINT) lets requests in flight finish before their sockets,
            /// backend ones included, are broken. Default 30.
            shutdown_timeout: f64 => shutdown_timeout: Duration = 30.0; live, range span(0.0, DAY, Seconds), flag shutdown_timeout;
            /// Seconds a tunnel (an upgraded connection: a WebSocket) may go without a byte in either
            /// direction before both sides are closed. Default 3600 (HAProxy's `timeout tunnel`,
            /// nginx's `proxy_read_timeout`, as usually raised for WebSockets).
            tunnel_idle_timeout: f64 => tunnel_idle_timeout: Duration = 3600.0; live, range span(0.001, DAY, Seconds), flag tunnel_idle_timeout;
            /// Peers whose `X-Forwarded-For` is believed (CIDRs). Default loopback only.
            trusted_proxies: Vec<Cidr> => trusted_proxies: Vec<Cidr> = vec![Cidr::parse("127.0.0.0/8").unwrap(), Cidr::parse("::1/128").unwrap()]; live, flag trusted_proxy;
            /// Whether request header fields with `_` in their names are forwarded (nginx's
            /// `underscores_in_headers`). Default false: they are dropped, because a CGI or WSGI
            /// backend reads `X_Real_IP` as the `X-Real-IP` the proxy sets. Even when true, the
            /// underscore spellings of the fields the proxy sets itself are dropped.
            underscores_in_headers: bool => underscores_in_headers: bool = false; live, flag underscores_in_headers;
            /// Whether each run of `/` in a request path is merged into one before the path is matched
            /// and forwarded (nginx's `merge_slashes`). Default true: `//lb/backends` is the admin path
            /// it looks like to a backend that merges them.
            merge_slashes: bool => merge_slashes: bool = true; live;
            /// Whether `%2F` and `%5C` may appear inside a path segment (passed on encoded, for APIs
            /// that put encoded names in paths). Default false: `400`, since a backend that decodes
            /// them reads a path other than the one matched.
            allow_encoded_slashes: bool => allow_encoded_slashes: bool = false; live, flag allow_encoded_slashes;
            /// The protocols an `Upgrade` request may switch to, case-insensitive (Envoy's
            /// `upgrade_configs`). Default `["websocket"]`. Any other `Upgrade` (`h2c` above all) goes
            /// to the backend as a plain request, without `Upgrade`, `HTTP2-Settings` and their
            /// `Connection` options, so it is answered, never tunnelled.
            upgrade_protocols: Vec<String> => upgrade_protocols: Vec<String> = vec!["websocket".to_string()]; live, flag upgrade_protocol;
            /// Request bodies are read whole by the poller before a worker sees them: in memory up to
            /// this many bytes, larger ones in a temp file (nginx's `client_body_buffer_size`, 16 KiB
            /// there). Default 64 KiB.
            client_body_buffer_size: usize => client_body_buffer_size: usize = BodyBuffering::default().memory_threshold; live, range span(0.0, GIB, Bytes);
            /// Bytes of request bodies held in memory by all connections together; past it, bodies go
            /// straight to temp files. Default 64 MiB.
            client_body_memory_cap: u64 => client_body_memory_cap: u64 = BodyBuffering::default().memory_cap; live, range span(0.0, 64.0 * GIB, Bytes);
            /// Directory of body temp files (nginx's `client_body_temp_path`); each file is unlinked as
            /// soon as it is made. Default: the system temp directory.
            client_body_temp_path: Option<PathBuf> => client_body_temp_path: Option<PathBuf> = None; restart;
            /// Bytes of body temp files of all connections together, however much room the disk has;
            /// the cap in force is this or `client_body_temp_free_share` of the free space, the
            /// smaller (logged at start). Past it, a body is refused with `503` + `Retry-After`.
            /// Default 16 GiB.
            client_body_temp_cap: u64 => client_body_temp_cap: u64 = BodyBuffering::default().disk_cap; live, range span(0.0, 64.0 * TIB, Bytes), flag client_body_temp_cap;
            /// Share of the temp directory's free space, measured at start, that body temp files may
            /// take together, so that uploads never fill the disk (or, on a tmpfs, the memory).
            /// Default 0.25.
            client_body_temp_free_share: f64 => client_body_temp_free_share: f64 = BodyBuffering::default().disk_free_share; live, range span(0.01, 1.0, Ratio), flag client_body_temp_free_share;
            /// Whether request bodies are read whole before a worker sees them (nginx's
            /// `proxy_request_buffering`). Default true. Off, a body streams to the backend as it
            /// arrives: for uploads that must not wait (or not touch disk), at the price of a worker
            /// held at the client's pace (see `request_body_min_rate`) and no retry on another backend.
            request_buffering: bool => request_buffering: bool = BodyBuffering::default().request_buffering; live;
        }
        /// What one client, or all together, may take: rates, workers, requests in flight, body sizes.
        client_limits: ClientLimits {
            /// Requests per second for all clients together; over it, `429`. Default 0: off.
            rate_limit: f64 => rate_limit: f64 = 0.0; live, flag rate_limit;
            /// Requests the global limit admits at once. Default 0: one second's worth,
            /// `max(1, ceil(rate_limit))`.
            rate_limit_burst: u32 => rate_limit_burst: u32 = 0; live, flag rate_limit_burst;
            /// Requests per second for each client address (the address ip_hash uses: the peer, or
            /// what a trusted proxy says). Default 0: off.
            client_rate_limit: f64 => client_rate_limit: f64 = 0.0; live, flag client_rate_limit;
            /// Requests each client's bucket admits at once. Default 0: `max(1, ceil(client_rate_limit))`.
            client_rate_limit_burst: u32 => client_rate_limit_burst: u32 = 0; live, flag client_rate_limit_burst;
            /// Most client addresses the per-client limit tracks at once; beyond it the least recently
            /// seen are forgotten. Default 100 000 (about 10 MB when full).
            rate_limit_max_clients: usize => rate_limit_max_clients: usize = ClientLimiter::DEFAULT_MAX_ENTRIES; live;
            /// Most workers one client (its address after `trusted_proxies`) has at once; its requests
            /// beyond it wait (never refused) until one of its own is answered, and other clients'
            /// requests go ahead of them. One client with slow requests cannot take every worker.
            /// Default: half of `threads`; 0: off.
            client_max_workers: Option<usize> => client_max_workers: Option<usize> = None; live, range or_off(1.0, 1_000_000.0, Count), flag client_max_workers;
            /// Most requests one client may have in process at once: with the workers, waiting for its
            /// share of them, or open tunnels (WebSockets). More get `429` + `Retry-After: 1` (nginx's
            /// `limit_conn`, HAProxy's `sc_conn_cur`). Default 0: off.
            client_max_in_flight: usize => client_max_in_flight: usize = 0; live, range or_off(1.0, 1_000_000.0, Count), flag client_max_in_flight;
            /// Largest request body in bytes: `413` above, with a body that says the limit and this key.
            /// Default 1 MiB (nginx's `client_max_body_size`); a service that takes uploads raises it.
            max_body_bytes: u64 => max_body_bytes: u64 = Limits::default().max_body_bytes; live, range span(0.0, TIB, Bytes), flag max_body_bytes;
            /// Share of the cap in force that one client's body temp files may take (the client every
            /// per-client limit counts by: the peer, or what a trusted proxy says); past it, its next
            /// body is refused with `429` + `Retry-After` while other clients' go on. Default 0.25; 1
            /// turns it off.
            client_body_temp_client_share: f64 => client_body_temp_client_share: f64 = BodyBuffering::default().client_disk_share; live, range span(0.01, 1.0, Ratio), flag client_body_temp_client_share;
            /// The slowest a client may send a body, buffered or streamed, in bytes per second: it
            /// gets `client_io_timeout` (the grace at its start) plus one second per this many bytes
            /// received, in all, then `408` (Apache's mod_reqtimeout `MinRate`, default 500 there too).
            /// 0: no overall limit. Default 500.
            request_body_min_rate: u64 => request_body_min_rate: u64 = BodyBuffering::default().min_upload_rate; live, range span(0.0, GIB, Bytes), flag request_body_min_rate;
        }
        /// TLS: the HTTPS listener's port and certificates, and the CAs that HTTPS backends are
        /// verified against.
        tls: TlsSettings {
            /// Port of an HTTPS listener beside the HTTP one (on `host`), served by the same workers:
            /// TLS 1.2 and 1.3 with rustls, ALPN `http/1.1`, `X-Forwarded-Proto: https` upstream.
            /// Default unset: no TLS.
            tls_port: Option<u16> => port: Option<u16> = None; restart, flag tls_port;
            /// The HTTPS listener's PEM certificate chain, leaf first; read again on every reload (a
            /// renewed certificate under the same name is served from the next handshake). Required
            /// with `tls_port`.
            tls_cert: Option<PathBuf> => cert: Option<PathBuf> = None; live, flag tls_cert;
            /// `tls_cert`'s PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC). Default: the `tls_cert`
            /// file itself (a combined PEM, as HAProxy's `crt`).
            tls_key: Option<PathBuf> => key: Option<PathBuf> = None; live, flag tls_key;
            /// More certificates, each served to clients whose SNI names one of its DNS names (exact
            /// names before wildcards); `tls_cert` is served to the others. Default none.
            tls_sni_certificates: Vec<TlsCertificateFiles> => sni_certificates: Vec<TlsCertificateFiles> = Vec::new(); live;
            /// Seconds from accept to a complete TLS handshake; then `client_header_timeout` runs.
            /// Default 10.
            tls_handshake_timeout: u64 => handshake_timeout: Duration = Limits::default().handshake_timeout.as_secs(); live, range span(1.0, DAY, Seconds), flag tls_handshake_timeout;
            /// PEM file of the certificate authorities that HTTPS backends' certificates are verified
            /// against (nginx's `proxy_ssl_trusted_certificate`), read at start and on each reload.
            /// Default unset: the system roots (Mozilla's, built in).
            upstream_ca: Option<PathBuf> => upstream_ca: Option<PathBuf> = None; live, flag upstream_ca;
        }
        /// Running it: logs, the management API, where runtime changes are kept, DNS refresh.
        operations: Operations {
            /// Log one line per request. Default true (the seed's).
            access_log: bool => access_log: bool = true; restart, flag access_log;
            /// `combined` (nginx's, plus upstream address, upstream time, request time and request id)
            /// or `json`. Default `combined`.
            access_log_format: AccessFormat => access_log_format: AccessFormat = AccessFormat::Combined; restart, flag access_log_format;
            /// Where access-log lines go. Default: stderr.
            access_log_file: Option<PathBuf> => access_log_file: Option<PathBuf> = None; restart, flag access_log_file;
            /// Where the process's other log lines go (startup, health and breaker changes, warnings).
            /// Default: stderr.
            log_file: Option<PathBuf> => log_file: Option<PathBuf> = None; restart, flag log_file;
            /// Path prefix of the management API. Default `/lb`.
            admin_prefix: String => admin_prefix: String = "/lb".to_string(); live;
            /// When set, every caller of the management API must send `Authorization: Bearer <token>`
            /// (loopback peers too); then peers other than loopback may use it. Default unset: only
            /// direct loopback peers, and never a request carrying forwarding headers.
            admin_token: Option<String> => admin_token: Option<String> = None; live, flag admin_token, shown "(set)";
            /// A separate address for the management API (and dashboard). When set, the data port
            /// serves none of it: `/lb/...` is proxied like any path. Default unset.
            admin_listen: Option<SocketAddr> => admin_listen: Option<SocketAddr> = None; restart, flag admin_listen;
            /// A JSON file that keeps every runtime change to the backends (add, remove, enable,
            /// disable, weight, drain), written atomically on each change and read back at start, where
            /// it replaces the configured backends. Default unset.
            state_file: Option<PathBuf> => state_file: Option<PathBuf> = None; restart, flag state_file;
            /// Where several instances share their backends: `etcd://HOST:PORT/PREFIX`. Backends,
            /// weights, enabled and draining live there (loaded at start, followed through etcd's
            /// watch); management API changes are written there first. Default unset: this instance's
            /// table is its own.
            registry: Option<RegistryUrl> => registry: Option<RegistryUrl> = None; restart, flag registry;
            /// Seconds between re-resolutions of backend host names (HAProxy's `resolvers`); a changed
            /// address is applied like any change of the table, a failed lookup keeps the last one.
            /// Default 30; 0 resolves once, when a backend is added.
            dns_refresh_interval: f64 => dns_refresh_interval: Option<Duration> = 30.0; live, range or_off(0.01, DAY, Seconds), flag dns_refresh_interval;
        }

    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file with every key away from its default (each number inside its range).
    fn every_key_changed() -> serde_json::Value {
        let mut file = serde_json::to_value(ConfigFile::default()).unwrap();
        for setting in SETTINGS {
            let value = &mut file[setting.key];
            *value = match (setting.range, &*value) {
                (Some(range), _) => {
                    let number = if range.min > 0.0 { range.min } else { range.max };
                    match setting.file_type {
                        "f64" => serde_json::json!(number),
                        _ => serde_json::json!(number as u64),
                    }
                }
                (None, serde_json::Value::Bool(on)) => serde_json::json!(!on),
                _ => continue,
            };
        }
        file
    }

    #[test]
    fn the_file_form_goes_to_the_groups_and_back_unchanged() {
        for json in [serde_json::to_value(ConfigFile::default()).unwrap(), every_key_changed()] {
            let file: ConfigFile = serde_json::from_value(json.clone()).unwrap();
            file.validate().unwrap();
            let config = Config::try_from(file.clone()).unwrap();
            assert_eq!(ConfigFile::from(&config), file);
            assert_eq!(serde_json::to_value(&config).unwrap(), json, "what /lb/config and a reload compare");
        }
    }

    #[test]
    fn the_list_names_each_key_once_and_every_file_key_is_in_it() {
        let mut keys: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
        keys.sort_unstable();
        let before = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), before, "a key listed twice");
        let file = serde_json::to_value(ConfigFile {
            pools: BTreeMap::from([("p".into(), PoolConfig::default())]),
            ..Default::default()
        })
        .unwrap();
        let structure = ["backends", "pools", "routes"];
        for key in file.as_object().unwrap().keys().filter(|k| !structure.contains(&k.as_str())) {
            assert!(keys.binary_search(&key.as_str()).is_ok(), "{key} is in the file but not in the list");
        }
        let pool_keys: Vec<&str> = SETTINGS.iter().filter(|s| s.per_pool).map(|s| s.key).collect();
        assert_eq!(pool_keys, POOL_SETTINGS);
    }

    #[test]
    fn seconds_that_no_duration_holds_are_refused_with_their_range() {
        let error = Config::try_from(ConfigFile { request_timeout: -1.0, ..Default::default() }).unwrap_err();
        assert_eq!(error.to_string(), "request_timeout must be 0.001-86400 s, got -1");
        let error = serde_json::from_str::<Config>(r#"{"shutdown_timeout": -2.5}"#).unwrap_err();
        assert!(error.to_string().starts_with("shutdown_timeout must be 0-86400 s, got -2.5"), "{error}");
        let off = Config::try_from(ConfigFile { health_check_interval: 0.0, ..Default::default() }).unwrap();
        assert_eq!(off.health.interval, None);
        assert_eq!(Config::default().health.interval, Some(Duration::from_secs(30)));
    }

    #[test]
    fn a_reload_keeps_what_the_list_marks_restart_and_names_it() {
        let running = Config::default();
        let mut next = running.clone();
        next.listener.port = 9999;
        next.operations.access_log = false;
        next.pool.max_tries = 7;
        assert_eq!(Config::keep_restart_only(&mut next, &running), ["port", "access_log"]);
        assert_eq!((next.listener.port, next.operations.access_log, next.pool.max_tries), (8080, true, 7));
        let restart: Vec<&str> = SETTINGS.iter().filter(|s| !s.reloadable).map(|s| s.key).collect();
        assert_eq!(
            restart,
            [
                "host",
                "port",
                "threads",
                "pollers",
                "client_body_temp_path",
                "tls_port",
                "access_log",
                "access_log_format",
                "access_log_file",
                "log_file",
                "admin_listen",
                "state_file",
                "registry"
            ]
        );
    }
}
