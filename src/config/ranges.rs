//! What a valid range is: the list of settings ([`super::settings`]) gives each numeric
//! setting one, checked at start, in the config file and on reload
//! ([`ConfigFile::validate`](super::ConfigFile::validate)), and listed in the README (a test
//! compares the two).
//! A value out of its range is one line naming the key, the range and the value; nothing
//! downstream ever sees one (no panic on `Vec::with_capacity(max_tries)`, no pool of 0
//! connections).

use super::{invalid, ConfigError, RANGES};

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

/// `min..=max`, for the list of settings (which fills in the key).
pub(super) const fn span(min: f64, max: f64, unit: Unit) -> Range {
    Range { key: "", min, max, unit, off: None }
}

/// 0 (off), or `min..=max`.
pub(super) const fn or_off(min: f64, max: f64, unit: Unit) -> Range {
    Range { key: "", min, max, unit, off: Some(0.0) }
}

pub(super) const KIB: f64 = 1024.0;
pub(super) const MIB: f64 = KIB * KIB;
pub(super) const GIB: f64 = MIB * KIB;
pub(super) const TIB: f64 = GIB * KIB;
/// A day: the longest any timeout may be.
pub(super) const DAY: f64 = 86_400.0;

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

    pub(super) fn check_value(&self, value: f64, shown: &dyn std::fmt::Display) -> Result<(), ConfigError> {
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

/// A setting's value as its range sees it: integers are compared as f64 (every bound is far
/// below 2^53, and a larger value is out of range however it rounds); an unset optional
/// value is in range.
pub(super) trait RangeValue {
    /// Checks the value against `range`.
    fn check(&self, range: &Range) -> Result<(), ConfigError>;
}

macro_rules! numbers_in_range {
    ($($ty:ty),*) => {$(
        impl RangeValue for $ty {
            fn check(&self, range: &Range) -> Result<(), ConfigError> {
                range.check_value(*self as f64, self)
            }
        }
    )*};
}

numbers_in_range!(usize, u64, u32, f64);

impl RangeValue for Option<usize> {
    fn check(&self, range: &Range) -> Result<(), ConfigError> {
        self.as_ref().map_or(Ok(()), |value| value.check(range))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigFile;

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
        ConfigFile::default().check_ranges().unwrap();
    }

    #[test]
    fn out_of_range_values_are_one_line_naming_key_range_and_value() {
        let cases: Vec<(ConfigFile, &str)> = vec![
            (ConfigFile { max_connections: 0, ..ConfigFile::default() }, "max_connections must be 1-1000000, got 0"),
            (ConfigFile { max_tries: 1 << 40, ..ConfigFile::default() }, "max_tries must be 1-100, got 1099511627776"),
            (
                ConfigFile { retry_body_max_bytes: u64::MAX, ..ConfigFile::default() },
                "retry_body_max_bytes must be 0-1 GiB, got 18446744073709551615",
            ),
            (ConfigFile { queue_capacity: 0, ..ConfigFile::default() }, "queue_capacity must be 1-1000000, got 0"),
            (
                ConfigFile { request_timeout: f64::NAN, ..ConfigFile::default() },
                "request_timeout must be 0.001-86400 s, got NaN",
            ),
            (
                ConfigFile { shutdown_timeout: -1.0, ..ConfigFile::default() },
                "shutdown_timeout must be 0-86400 s, got -1",
            ),
            (
                ConfigFile { health_check_interval: 0.001, ..ConfigFile::default() },
                "health_check_interval must be 0 (off) or 0.01-86400 s, got 0.001",
            ),
            (
                ConfigFile { backend_max_connections: Some(0), ..ConfigFile::default() },
                "backend_max_connections must be 1-1000000, got 0",
            ),
        ];
        for (config, message) in cases {
            let error = config.check_ranges().unwrap_err().to_string();
            assert_eq!(error, message);
            assert!(!error.contains('\n'));
        }
    }
}
