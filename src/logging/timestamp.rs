//! UTC calendar times for log lines, without a time-zone database or a date crate: the process
//! logs in UTC, so a line's time reads the same on every machine.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// A moment split into UTC calendar fields, to the millisecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UtcTime {
    pub year: i64,
    /// 1-12.
    pub month: u32,
    /// 1-31.
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millisecond: u32,
}

impl UtcTime {
    /// The calendar fields of `time`; times before 1970 read as 1970-01-01 00:00:00.
    pub fn from_system_time(time: SystemTime) -> UtcTime {
        let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let seconds = since_epoch.as_secs();
        let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
        let of_day = (seconds % 86_400) as u32;
        UtcTime {
            year,
            month,
            day,
            hour: of_day / 3600,
            minute: of_day / 60 % 60,
            second: of_day % 60,
            millisecond: since_epoch.subsec_millis(),
        }
    }

    /// nginx's `$time_local` in UTC: `10/Oct/2000:13:55:36 +0000`.
    pub fn write_common_log(&self, out: &mut String) {
        let month = MONTHS[(self.month - 1) as usize];
        let _ = write!(
            out,
            "{:02}/{month}/{:04}:{:02}:{:02}:{:02} +0000",
            self.day, self.year, self.hour, self.minute, self.second
        );
    }

    /// RFC 3339 with milliseconds: `2000-10-10T13:55:36.123Z`.
    pub fn write_rfc3339(&self, out: &mut String) {
        let _ = write!(
            out,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millisecond
        );
    }
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day), proleptic
/// Gregorian, exact for every day.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months counted from March, so the leap day is the last day of the year.
    let march_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * march_month + 2) / 5 + 1) as u32;
    let month = if march_month < 10 { march_month + 3 } else { march_month - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(seconds: u64, millis: u64) -> UtcTime {
        UtcTime::from_system_time(UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_millis(millis))
    }

    #[test]
    fn known_dates() {
        let mut out = String::new();
        at(971_186_136, 123).write_common_log(&mut out);
        assert_eq!(out, "10/Oct/2000:13:55:36 +0000", "nginx's documented example, in UTC");
        out.clear();
        at(971_186_136, 123).write_rfc3339(&mut out);
        assert_eq!(out, "2000-10-10T13:55:36.123Z");
        out.clear();
        at(951_782_400, 0).write_rfc3339(&mut out);
        assert_eq!(out, "2000-02-29T00:00:00.000Z", "a leap day of a century divisible by 400");
        out.clear();
        at(4_107_542_399, 999).write_rfc3339(&mut out);
        assert_eq!(out, "2100-02-28T23:59:59.999Z", "2100 is not a leap year");
        assert_eq!(at(0, 0), UtcTime::from_system_time(UNIX_EPOCH - Duration::from_secs(5)), "before 1970 clamps");
    }

    #[test]
    fn every_day_for_three_centuries_follows_the_previous() {
        let days_in = |year: i64, month: u32| match month {
            2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let mut expected = (1970, 1, 1);
        for days in 0..(300 * 366) {
            assert_eq!(civil_from_days(days), expected, "day {days}");
            let (year, month, day) = expected;
            expected = if day < days_in(year, month) {
                (year, month, day + 1)
            } else if month < 12 {
                (year, month + 1, 1)
            } else {
                (year + 1, 1, 1)
            };
        }
    }
}
