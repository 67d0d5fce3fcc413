//! The valid range of every numeric setting, in one table: checked at start, in the config file
//! and on reload ([`Config::validate`]), and listed in the README (a test compares the two).
//! A value out of its range is one line naming the key, the range and the value; nothing
//! downstream ever sees one (no panic on `Vec::with_capacity(max_tries)`, no pool of 0
//! connections).

use super::{invalid, Config, ConfigError};

/// What a range is measured in, for the message and the README.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// A count (threads, connections, tries...).
    Count,
    /// Bytes.
    Bytes,
    /// Seconds (fractions allowed where the setting is a float).
    Seconds,
    /// A ratio (0.2 = 20 %).
    Ratio,
}

/// One setting's valid range, both ends included.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    /// The config-file key.
    pub key: &'static str,
    /// The smallest valid value.
    pub min: f64,
    /// The largest valid value.
    pub max: f64,
    /// What the numbers are.
    pub unit: Unit,
    /// A value that is valid outside `min..=max` (0 = off), if any.
    pub off: Option<f64>,
}

const fn range(key: &'static str, min: f64, max: f64, unit: Unit) -> Range {
    Range { key, min, max, unit, off: None }
}

const fn or_off(key: &'static str, min: f64, max: f64, unit: Unit) -> Range {
    Range { key, min, max, unit, off: Some(0.0) }
}

const KIB: f64 = 1024.0;
const MIB: f64 = KIB * KIB;
const GIB: f64 = MIB * KIB;
const TIB: f64 = GIB * KIB;
/// A day: the longest any timeout may be.
const DAY: f64 = 86_400.0;

/// Every numeric setting's range. Settings not listed here are checked where they are parsed
/// (ports by their type, rates and bursts in `validate_traffic`, statuses, paths, names).
pub const RANGES: &[Range] = &[
    range("threads", 1.0, 10_000.0, Unit::Count),
    range("queue_capacity", 1.0, 1_000_000.0, Unit::Count),
    range("max_connections", 1.0, 1_000_000.0, Unit::Count),
    range("backend_max_connections", 1.0, 1_000_000.0, Unit::Count),
    or_off("client_max_workers", 1.0, 1_000_000.0, Unit::Count),
    or_off("client_max_in_flight", 1.0, 1_000_000.0, Unit::Count),
    range("upstream_keepalive", 0.0, 1_000_000.0, Unit::Count),
    range("max_tries", 1.0, 100.0, Unit::Count),
    range("retry_budget_min", 0.0, 1_000_000.0, Unit::Count),
    range("retry_budget_ratio", 0.0, 10.0, Unit::Ratio),
    range("retry_body_max_bytes", 0.0, GIB, Unit::Bytes),
    range("max_body_bytes", 0.0, TIB, Unit::Bytes),
    range("client_body_buffer_size", 0.0, GIB, Unit::Bytes),
    range("client_body_memory_cap", 0.0, 64.0 * GIB, Unit::Bytes),
    range("client_body_temp_cap", 0.0, 64.0 * TIB, Unit::Bytes),
    range("client_body_temp_free_share", 0.01, 1.0, Unit::Ratio),
    range("client_body_temp_client_share", 0.01, 1.0, Unit::Ratio),
    range("request_body_min_rate", 0.0, GIB, Unit::Bytes),
    range("request_timeout", 0.001, DAY, Unit::Seconds),
    range("connect_timeout", 0.001, DAY, Unit::Seconds),
    range("backend_queue_timeout", 0.0, DAY, Unit::Seconds),
    range("upstream_keepalive_timeout", 0.001, DAY, Unit::Seconds),
    range("client_header_timeout", 1.0, DAY, Unit::Seconds),
    range("keep_alive_timeout", 1.0, DAY, Unit::Seconds),
    range("client_io_timeout", 1.0, DAY, Unit::Seconds),
    range("tls_handshake_timeout", 1.0, DAY, Unit::Seconds),
    range("shutdown_timeout", 0.0, DAY, Unit::Seconds),
    range("tunnel_idle_timeout", 0.001, DAY, Unit::Seconds),
    or_off("health_check_interval", 0.01, DAY, Unit::Seconds),
    range("health_check_fast_interval", 0.01, DAY, Unit::Seconds),
    or_off("dns_refresh_interval", 0.01, DAY, Unit::Seconds),
    range("health_check_timeout", 0.001, DAY, Unit::Seconds),
    range("health_check_rise", 1.0, 1000.0, Unit::Count),
    range("health_check_fall", 1.0, 1000.0, Unit::Count),
    range("breaker_consecutive_failures", 1.0, 1_000_000.0, Unit::Count),
    range("breaker_failure_ratio", 0.0, 1.0, Unit::Ratio),
    range("breaker_cooldown", 0.001, DAY, Unit::Seconds),
    range("breaker_half_open_trials", 1.0, 1000.0, Unit::Count),
    range("slow_start", 0.0, DAY, Unit::Seconds),
    range("peak_ewma_window", 0.001, 3600.0, Unit::Seconds),
    range("session_timeout", 0.0, 34_560_000.0, Unit::Seconds),
    range("weight", 1.0, 1_000_000.0, Unit::Count),
];

impl Range {
    /// The range as the README and the error messages write it: `1-10000`, `0-1 GiB`,
    /// `0 (off) or 0.01-86400 s`.
    pub fn describe(&self) -> String {
        let number = |v: f64| -> String {
            match self.unit {
                Unit::Bytes if v >= TIB && v % TIB == 0.0 => format!("{} TiB", v / TIB),
                Unit::Bytes if v >= GIB && v % GIB == 0.0 => format!("{} GiB", v / GIB),
                Unit::Bytes if v >= MIB && v % MIB == 0.0 => format!("{} MiB", v / MIB),
                _ => format!("{v}"),
            }
        };
        let unit = if self.unit == Unit::Seconds { " s" } else { "" };
        let span = format!("{}-{}{unit}", number(self.min), number(self.max));
        match self.off {
            Some(off) => format!("{} (off) or {span}", number(off)),
            None => span,
        }
    }

    /// Whether `value` is valid.
    pub fn contains(&self, value: f64) -> bool {
        value.is_finite() && ((self.min..=self.max).contains(&value) || self.off == Some(value))
    }

    fn check(&self, value: f64, shown: &dyn std::fmt::Display) -> Result<(), ConfigError> {
        if self.contains(value) {
            Ok(())
        } else {
            Err(invalid(self.key, format!("{} must be {}, got {shown}", self.key, self.describe())))
        }
    }
}

/// The range of `key` (a key of [`RANGES`]).
pub(crate) fn of(key: &str) -> &'static Range {
    RANGES.iter().find(|r| r.key == key).unwrap_or_else(|| panic!("no range for {key}"))
}

/// Checks every numeric setting of `config` against its range.
pub(super) fn check(config: &Config) -> Result<(), ConfigError> {
    // Integers are compared as f64: every bound is far below 2^53, and a larger value is
    // out of range however it rounds.
    let counts: [(&str, f64, &dyn std::fmt::Display); 25] = [
        ("threads", config.threads as f64, &config.threads),
        ("client_max_in_flight", config.client_max_in_flight as f64, &config.client_max_in_flight),
        ("queue_capacity", config.queue_capacity as f64, &config.queue_capacity),
        ("max_connections", config.max_connections as f64, &config.max_connections),
        ("max_tries", config.max_tries as f64, &config.max_tries),
        ("retry_budget_min", config.retry_budget_min as f64, &config.retry_budget_min),
        ("retry_body_max_bytes", config.retry_body_max_bytes as f64, &config.retry_body_max_bytes),
        ("max_body_bytes", config.max_body_bytes as f64, &config.max_body_bytes),
        ("client_body_buffer_size", config.client_body_buffer_size as f64, &config.client_body_buffer_size),
        ("client_body_memory_cap", config.client_body_memory_cap as f64, &config.client_body_memory_cap),
        ("client_body_temp_cap", config.client_body_temp_cap as f64, &config.client_body_temp_cap),
        ("request_body_min_rate", config.request_body_min_rate as f64, &config.request_body_min_rate),
        ("client_header_timeout", config.client_header_timeout as f64, &config.client_header_timeout),
        ("keep_alive_timeout", config.keep_alive_timeout as f64, &config.keep_alive_timeout),
        ("client_io_timeout", config.client_io_timeout as f64, &config.client_io_timeout),
        ("tls_handshake_timeout", config.tls_handshake_timeout as f64, &config.tls_handshake_timeout),
        ("health_check_rise", f64::from(config.health_check_rise), &config.health_check_rise),
        ("health_check_fall", f64::from(config.health_check_fall), &config.health_check_fall),
        (
            "breaker_consecutive_failures",
            f64::from(config.breaker_consecutive_failures),
            &config.breaker_consecutive_failures,
        ),
        ("breaker_half_open_trials", f64::from(config.breaker_half_open_trials), &config.breaker_half_open_trials),
        ("session_timeout", config.session_timeout as f64, &config.session_timeout),
        ("retry_budget_ratio", config.retry_budget_ratio, &config.retry_budget_ratio),
        ("breaker_failure_ratio", config.breaker_failure_ratio, &config.breaker_failure_ratio),
        ("client_body_temp_free_share", config.client_body_temp_free_share, &config.client_body_temp_free_share),
        ("client_body_temp_client_share", config.client_body_temp_client_share, &config.client_body_temp_client_share),
    ];
    for (key, value, shown) in counts {
        of(key).check(value, shown)?;
    }
    if let Some(cap) = config.backend_max_connections {
        of("backend_max_connections").check(cap as f64, &cap)?;
    }
    if let Some(share) = config.client_max_workers {
        of("client_max_workers").check(share as f64, &share)?;
    }
    if let Some(kept) = config.upstream_keepalive {
        of("upstream_keepalive").check(kept as f64, &kept)?;
    }
    let seconds = [
        ("request_timeout", config.request_timeout),
        ("connect_timeout", config.connect_timeout),
        ("backend_queue_timeout", config.backend_queue_timeout),
        ("upstream_keepalive_timeout", config.upstream_keepalive_timeout),
        ("shutdown_timeout", config.shutdown_timeout),
        ("tunnel_idle_timeout", config.tunnel_idle_timeout),
        ("health_check_interval", config.health_check_interval),
        ("health_check_fast_interval", config.health_check_fast_interval),
        ("dns_refresh_interval", config.dns_refresh_interval),
        ("health_check_timeout", config.health_check_timeout),
        ("breaker_cooldown", config.breaker_cooldown),
        ("slow_start", config.slow_start),
        ("peak_ewma_window", config.peak_ewma_window),
    ];
    for (key, value) in seconds {
        of(key).check(value, &value)?;
    }
    let weight = of("weight");
    for backend in &config.backends {
        if !weight.contains(f64::from(backend.weight)) {
            let why = format!(
                "backend {}:{}: weight must be {}, got {}",
                backend.host,
                backend.port,
                weight.describe(),
                backend.weight
            );
            return Err(invalid("backends", why));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_range_is_well_formed_and_described() {
        for r in RANGES {
            assert!(r.min <= r.max && r.min >= 0.0, "{r:?}");
            assert!(!r.describe().is_empty());
        }
        assert_eq!(of("threads").describe(), "1-10000");
        assert_eq!(of("max_body_bytes").describe(), "0-1 TiB");
        assert_eq!(of("health_check_interval").describe(), "0 (off) or 0.01-86400 s");
    }

    #[test]
    fn the_defaults_are_in_range() {
        check(&Config::default()).unwrap();
    }

    #[test]
    fn out_of_range_values_are_one_line_naming_key_range_and_value() {
        let cases: Vec<(Config, &str)> = vec![
            (Config { max_connections: 0, ..Config::default() }, "max_connections must be 1-1000000, got 0"),
            (Config { max_tries: 1 << 40, ..Config::default() }, "max_tries must be 1-100, got 1099511627776"),
            (
                Config { retry_body_max_bytes: u64::MAX, ..Config::default() },
                "retry_body_max_bytes must be 0-1 GiB, got 18446744073709551615",
            ),
            (Config { queue_capacity: 0, ..Config::default() }, "queue_capacity must be 1-1000000, got 0"),
            (
                Config { request_timeout: f64::NAN, ..Config::default() },
                "request_timeout must be 0.001-86400 s, got NaN",
            ),
            (Config { shutdown_timeout: -1.0, ..Config::default() }, "shutdown_timeout must be 0-86400 s, got -1"),
            (
                Config { health_check_interval: 0.001, ..Config::default() },
                "health_check_interval must be 0 (off) or 0.01-86400 s, got 0.001",
            ),
            (
                Config { backend_max_connections: Some(0), ..Config::default() },
                "backend_max_connections must be 1-1000000, got 0",
            ),
        ];
        for (config, message) in cases {
            let error = check(&config).unwrap_err().to_string();
            assert_eq!(error, message);
            assert!(!error.contains('\n'));
        }
    }
}
