//! Whether the machine's CPUs had idle time lately, from the kernel's counters in `/proc/stat`:
//! what tells the worker pool that waking another worker can make things faster. Our own
//! counts cannot: a worker blocked on a backend leaves a core idle when the backend is on
//! another machine, but not when the backend (or the load generator) shares this one, and
//! more requests in flight then only make its queue longer.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

/// Samples `/proc/stat`'s summary line.
pub(crate) struct CpuIdle {
    stat: Option<File>,
    /// Idle and total time at the last sample, in clock ticks.
    last: Option<(u64, u64)>,
}

impl CpuIdle {
    /// A gauge reading `/proc/stat`; where that cannot be read, the CPUs always count as idle
    /// (the pool then wakes workers whenever its own counts say a core is free).
    pub fn new() -> CpuIdle {
        CpuIdle { stat: File::open("/proc/stat").ok(), last: None }
    }

    /// The share of time the CPUs were idle since the last sample (0 to 1); `None` when too
    /// little time passed to tell (under ten clock ticks in all, or no earlier sample).
    pub fn sample(&mut self) -> Option<f64> {
        let Some(file) = &mut self.stat else { return Some(1.0) };
        let mut buf = [0u8; 256];
        let read = file.seek(SeekFrom::Start(0)).and_then(|_| file.read(&mut buf));
        let Some((idle, total)) = read.ok().and_then(|n| parse_summary(&buf[..n])) else {
            return Some(1.0);
        };
        let previous = self.last.replace((idle, total));
        let (idle_before, total_before) = previous?;
        let elapsed = total.saturating_sub(total_before);
        if elapsed < 10 {
            // Under ten ticks the share is too coarse to mean anything: keep the older sample.
            self.last = previous;
            return None;
        }
        Some(idle.saturating_sub(idle_before) as f64 / elapsed as f64)
    }
}

/// Idle (idle + iowait) and total ticks from the `cpu ` line at the start of `/proc/stat`.
///
/// ```ignore
/// assert_eq!(parse_summary(b"cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 ..."), Some((850, 1000)));
/// ```
fn parse_summary(stat: &[u8]) -> Option<(u64, u64)> {
    let line = stat.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.strip_prefix("cpu ")?;
    // user nice system idle iowait irq softirq steal (guest and guest_nice are within user).
    let fields: Vec<u64> = line.split_ascii_whitespace().take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    if fields.len() < 5 {
        return None;
    }
    Some((fields[3] + fields[4], fields.iter().sum()))
}

#[cfg(test)]
mod tests {
    use super::parse_summary;

    #[test]
    fn the_summary_line_gives_idle_and_total_ticks() {
        assert_eq!(parse_summary(b"cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4 5\n"), Some((850, 1000)));
        assert_eq!(parse_summary(b"cpu  1 2 3 4 5 6 7 8\n"), Some((9, 36)));
        assert_eq!(parse_summary(b"cpu0 1 2 3 4 5\n"), None);
        assert_eq!(parse_summary(b"cpu  1 2\n"), None);
    }
}
