//! A lock-free latency histogram: log-linear buckets (HdrHistogram's layout) over atomics, so
//! every worker records without a lock and a scrape reads without stopping them.
//!
//! Values are nanoseconds. Below 64 ns every value has its own bucket; above, each power of two
//! is split into 32 equal buckets, so a bucket is at most 1/32 of its lower bound wide and its
//! midpoint is within 1/64 (1.6 %) of any value in it. 1216 buckets reach 2^42 ns (73 minutes);
//! longer values are counted in the last bucket, and [`HistogramSnapshot::max`] and
//! [`HistogramSnapshot::sum`] stay exact.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets per power of two, as a power of two: 2^5 = 32 sub-buckets bound the relative error.
const SUB_BUCKET_BITS: u32 = 5;
const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
/// Values from 2^42 ns (about 73 minutes) on share the last bucket.
const MAX_EXPONENT: u32 = 42;
/// The largest value with a bucket of its own range, in nanoseconds.
const MAX_TRACKED_NANOS: u64 = (1 << MAX_EXPONENT) - 1;
/// Buckets in all: 32 exact ones for 0-31 ns, then 32 for each power of two from 2^5 to 2^41.
pub const BUCKETS: usize = (MAX_EXPONENT - SUB_BUCKET_BITS + 1) as usize * SUB_BUCKETS;

/// The largest relative distance between a recorded value and what [`HistogramSnapshot::percentile`]
/// reports for it: half a bucket's width over its lower bound.
///
/// ```
/// assert_eq!(lb_sync::metrics::histogram::MAX_RELATIVE_ERROR, 1.0 / 64.0);
/// ```
pub const MAX_RELATIVE_ERROR: f64 = 1.0 / (2 * SUB_BUCKETS) as f64;

/// The bucket a value in nanoseconds is counted in.
fn bucket_index(nanos: u64) -> usize {
    let nanos = nanos.min(MAX_TRACKED_NANOS);
    if nanos < SUB_BUCKETS as u64 {
        return nanos as usize;
    }
    let exponent = 63 - nanos.leading_zeros();
    let shift = exponent - SUB_BUCKET_BITS;
    // The five bits below the leading one pick the sub-bucket.
    let sub_bucket = (nanos >> shift) as usize & (SUB_BUCKETS - 1);
    (shift as usize + 1) * SUB_BUCKETS + sub_bucket
}

/// The lowest value of bucket `index` and its width, in nanoseconds.
fn bucket_range(index: usize) -> (u64, u64) {
    if index < SUB_BUCKETS {
        return (index as u64, 1);
    }
    let shift = (index / SUB_BUCKETS - 1) as u32;
    let sub_bucket = (index % SUB_BUCKETS) as u64;
    ((SUB_BUCKETS as u64 + sub_bucket) << shift, 1 << shift)
}

/// Durations recorded by many threads at once, read as a [`HistogramSnapshot`].
///
/// About 10 KiB of atomics. Recording is two relaxed `fetch_add`s plus two loads (and rarely a
/// `fetch_max`/`fetch_min`) for the extremes: no lock, no allocation.
///
/// ```
/// use std::time::Duration;
/// use lb_sync::metrics::Histogram;
///
/// let histogram = Histogram::new();
/// for ms in 1..=100 {
///     histogram.record(Duration::from_millis(ms));
/// }
/// let snapshot = histogram.snapshot();
/// assert_eq!(snapshot.count(), 100);
/// assert_eq!(snapshot.max(), Some(Duration::from_millis(100)));
/// let p90 = snapshot.percentile(0.9).unwrap().as_secs_f64();
/// assert!((p90 - 0.090).abs() <= 0.090 / 64.0);
/// ```
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_nanos: AtomicU64,
    min_nanos: AtomicU64,
    max_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    /// An empty histogram.
    ///
    /// ```
    /// assert_eq!(lb_sync::metrics::Histogram::new().snapshot().count(), 0);
    /// ```
    pub fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
            sum_nanos: AtomicU64::new(0),
            min_nanos: AtomicU64::new(u64::MAX),
            max_nanos: AtomicU64::new(0),
        }
    }

    /// Counts one duration.
    ///
    /// ```
    /// let histogram = lb_sync::metrics::Histogram::new();
    /// histogram.record(std::time::Duration::from_micros(250));
    /// assert_eq!(histogram.snapshot().sum(), std::time::Duration::from_micros(250));
    /// ```
    pub fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_index(nanos)].fetch_add(1, Ordering::Relaxed);
        // Wraps after 584 years of summed latency; fine for a process's lifetime.
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        // Loads first: the extremes rarely change, and a load does not take the cache line
        // away from the other recording threads the way a read-modify-write does.
        if nanos > self.max_nanos.load(Ordering::Relaxed) {
            self.max_nanos.fetch_max(nanos, Ordering::Relaxed);
        }
        if nanos < self.min_nanos.load(Ordering::Relaxed) {
            self.min_nanos.fetch_min(nanos, Ordering::Relaxed);
        }
    }

    /// The counts so far. Records made while it is taken may be partly in it (in the sum but not
    /// yet in a bucket); the count is the buckets' total, so percentiles stay self-consistent.
    ///
    /// ```
    /// let histogram = lb_sync::metrics::Histogram::new();
    /// histogram.record(std::time::Duration::from_nanos(7));
    /// let snapshot = histogram.snapshot();
    /// assert_eq!(snapshot.percentile(0.5), Some(std::time::Duration::from_nanos(7)));
    /// ```
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let count = buckets.iter().sum();
        HistogramSnapshot {
            buckets,
            count,
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
            min_nanos: self.min_nanos.load(Ordering::Relaxed),
            max_nanos: self.max_nanos.load(Ordering::Relaxed),
        }
    }
}

/// A reading of a [`Histogram`]: counts, sum, extremes, percentiles and Prometheus buckets.
///
/// ```
/// use std::time::Duration;
/// use lb_sync::metrics::Histogram;
///
/// let histogram = Histogram::new();
/// histogram.record(Duration::from_millis(3));
/// histogram.record(Duration::from_millis(40));
/// let snapshot = histogram.snapshot();
/// assert_eq!(snapshot.cumulative(&[0.005, 0.05]), vec![1, 2]);
/// assert_eq!(snapshot.mean(), Some(Duration::from_micros(21_500)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    buckets: Vec<u64>,
    count: u64,
    sum_nanos: u64,
    min_nanos: u64,
    max_nanos: u64,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        Histogram::new().snapshot()
    }
}

impl HistogramSnapshot {
    /// Durations recorded.
    ///
    /// ```
    /// assert_eq!(lb_sync::metrics::HistogramSnapshot::default().count(), 0);
    /// ```
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The recorded durations added up, exactly (to the nanosecond).
    ///
    /// ```
    /// assert_eq!(lb_sync::metrics::HistogramSnapshot::default().sum(), std::time::Duration::ZERO);
    /// ```
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_nanos)
    }

    /// The longest duration recorded, exactly (in a [`since`](Self::since) difference: the
    /// middle of the highest bucket that changed); `None` before the first.
    ///
    /// ```
    /// assert_eq!(lb_sync::metrics::HistogramSnapshot::default().max(), None);
    /// ```
    pub fn max(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.max_nanos))
    }

    /// The shortest duration recorded, exactly (in a [`since`](Self::since) difference: the
    /// middle of the lowest bucket that changed); `None` before the first.
    ///
    /// ```
    /// assert_eq!(lb_sync::metrics::HistogramSnapshot::default().min(), None);
    /// ```
    pub fn min(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.min_nanos))
    }

    /// `sum / count`; `None` before the first duration.
    ///
    /// ```
    /// assert_eq!(lb_sync::metrics::HistogramSnapshot::default().mean(), None);
    /// ```
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.sum_nanos / self.count))
    }

    /// The `q` quantile (`0.5` for p50, `0.99` for p99): the value of rank `ceil(q × count)`,
    /// reported as the middle of its bucket (within [`MAX_RELATIVE_ERROR`] of the true value)
    /// and kept within the exact min and max; the lowest and highest ranks are the exact min and
    /// max. `q` outside 0-1 is clamped; `None` before the first duration.
    ///
    /// ```
    /// use std::time::Duration;
    /// let histogram = lb_sync::metrics::Histogram::new();
    /// for nanos in 1..=50 {
    ///     histogram.record(Duration::from_nanos(nanos)); // below 64 ns every bucket is exact
    /// }
    /// let snapshot = histogram.snapshot();
    /// assert_eq!(snapshot.percentile(0.5), Some(Duration::from_nanos(25)));
    /// assert_eq!(snapshot.percentile(0.9), Some(Duration::from_nanos(45)));
    /// assert_eq!(snapshot.percentile(1.0), Some(Duration::from_nanos(50)));
    /// ```
    pub fn percentile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        if rank == self.count {
            return self.max();
        }
        if rank == 1 {
            return self.min();
        }
        let mut seen = 0;
        for (index, &in_bucket) in self.buckets.iter().enumerate() {
            seen += in_bucket;
            if seen >= rank {
                let (lowest, width) = bucket_range(index);
                let middle = lowest + (width - 1) / 2;
                return Some(Duration::from_nanos(middle.clamp(self.min_nanos, self.max_nanos.max(self.min_nanos))));
            }
        }
        // Only reached when a concurrent record raced the snapshot's reads.
        self.max()
    }

    /// For each bound (seconds), how many durations were at most that long: Prometheus's
    /// cumulative `le` buckets (`f64::INFINITY` gives [`count`](Self::count)). A bucket is counted
    /// under a bound only when all of it is at or below the bound, so a count never includes a
    /// duration longer than its bound but may leave out those within 3 % below it.
    ///
    /// ```
    /// use std::time::Duration;
    /// let histogram = lb_sync::metrics::Histogram::new();
    /// for ms in [1, 2, 20, 200, 2000] {
    ///     histogram.record(Duration::from_millis(ms));
    /// }
    /// let snapshot = histogram.snapshot();
    /// assert_eq!(snapshot.cumulative(&[0.01, 0.1, 1.0, f64::INFINITY]), vec![2, 3, 4, 5]);
    /// ```
    pub fn cumulative(&self, bounds: &[f64]) -> Vec<u64> {
        let mut prefix = Vec::with_capacity(self.buckets.len() + 1);
        prefix.push(0);
        let mut total = 0;
        for &in_bucket in &self.buckets {
            total += in_bucket;
            prefix.push(total);
        }
        bounds
            .iter()
            .map(|&bound| {
                if bound.is_nan() || bound < 0.0 {
                    return 0;
                }
                let bound_nanos = (bound * 1e9).round();
                if bound_nanos >= MAX_TRACKED_NANOS as f64 {
                    return self.count;
                }
                // The buckets wholly at or below the bound are exactly those before the one
                // holding the next nanosecond.
                prefix[bucket_index(bound_nanos as u64 + 1)]
            })
            .collect()
    }

    /// Adds another snapshot's counts to this one (per-backend histograms into a total).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lb_sync::metrics::Histogram;
    /// let (a, b) = (Histogram::new(), Histogram::new());
    /// a.record(Duration::from_millis(1));
    /// b.record(Duration::from_millis(9));
    /// let mut total = a.snapshot();
    /// total.merge(&b.snapshot());
    /// assert_eq!((total.count(), total.min(), total.max()), (2, Some(Duration::from_millis(1)), Some(Duration::from_millis(9))));
    /// ```
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_nanos = self.sum_nanos.wrapping_add(other.sum_nanos);
        self.min_nanos = self.min_nanos.min(other.min_nanos);
        self.max_nanos = self.max_nanos.max(other.max_nanos);
    }

    /// The durations recorded between `earlier` and this snapshot of the same histogram (the
    /// history's one second). Counts and the sum are exact; the extremes of that stretch are
    /// not kept by the histogram, so they are the middles of its lowest and highest buckets
    /// (within [`MAX_RELATIVE_ERROR`]), as its percentiles are.
    ///
    /// ```
    /// use std::time::Duration;
    /// let histogram = lb_sync::metrics::Histogram::new();
    /// histogram.record(Duration::from_secs(2));
    /// let before = histogram.snapshot();
    /// histogram.record(Duration::from_nanos(10));
    /// histogram.record(Duration::from_nanos(20));
    /// let second = histogram.snapshot().since(&before);
    /// assert_eq!((second.count(), second.sum()), (2, Duration::from_nanos(30)));
    /// assert_eq!(second.max(), Some(Duration::from_nanos(20)));
    /// ```
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let buckets: Vec<u64> =
            self.buckets.iter().zip(&earlier.buckets).map(|(now, then)| now.saturating_sub(*then)).collect();
        let count = buckets.iter().sum();
        let middle = |index: usize| {
            let (lowest, width) = bucket_range(index);
            lowest + (width - 1) / 2
        };
        let lowest = buckets.iter().position(|&n| n > 0);
        let highest = buckets.iter().rposition(|&n| n > 0);
        HistogramSnapshot {
            count,
            sum_nanos: self.sum_nanos.wrapping_sub(earlier.sum_nanos),
            min_nanos: lowest.map_or(u64::MAX, middle),
            max_nanos: highest.map_or(0, middle),
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn within_bucket_error(reported: Duration, expected: Duration) -> bool {
        let (reported, expected) = (reported.as_nanos() as f64, expected.as_nanos() as f64);
        (reported - expected).abs() <= expected * MAX_RELATIVE_ERROR
    }

    #[test]
    fn every_value_falls_in_its_bucket_and_buckets_tile_the_range() {
        let mut next_lowest = 0;
        for index in 0..BUCKETS {
            let (lowest, width) = bucket_range(index);
            assert_eq!(lowest, next_lowest, "bucket {index} starts where the previous ends");
            assert!(width == 1 || width as f64 / lowest as f64 <= 1.0 / SUB_BUCKETS as f64, "bucket {index}");
            assert_eq!(bucket_index(lowest), index);
            assert_eq!(bucket_index(lowest + width - 1), index);
            next_lowest = lowest + width;
        }
        assert_eq!(next_lowest, MAX_TRACKED_NANOS + 1, "the last bucket ends at 2^42 ns");
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1, "longer values share the last bucket");
    }

    #[test]
    fn percentiles_of_one_to_a_thousand_microseconds() {
        let histogram = Histogram::new();
        for micros in 1..=1000 {
            histogram.record(Duration::from_micros(micros));
        }
        let s = histogram.snapshot();
        assert_eq!(s.count(), 1000);
        assert_eq!(s.sum(), Duration::from_micros(500_500));
        assert_eq!(s.min(), Some(Duration::from_micros(1)));
        assert_eq!(s.max(), Some(Duration::from_micros(1000)));
        for (q, expected_micros) in [(0.5, 500), (0.9, 900), (0.99, 990), (0.999, 999)] {
            let reported = s.percentile(q).unwrap();
            assert!(within_bucket_error(reported, Duration::from_micros(expected_micros)), "p{q}: {reported:?}");
        }
        // The known middles of those buckets: 500 µs lies in [499_712, 507_904) ns.
        assert_eq!(s.percentile(0.5), Some(Duration::from_nanos(499_712 + 4095)));
        assert_eq!(s.percentile(0.0), Some(Duration::from_micros(1)));
        assert_eq!(s.percentile(1.0), Some(Duration::from_micros(1000)));
    }

    #[test]
    fn small_values_are_exact() {
        let histogram = Histogram::new();
        for nanos in [3, 3, 10, 40, 63] {
            histogram.record(Duration::from_nanos(nanos));
        }
        let s = histogram.snapshot();
        let ranks: Vec<_> = [0.2, 0.4, 0.6, 0.8, 1.0].iter().map(|&q| s.percentile(q).unwrap().as_nanos()).collect();
        assert_eq!(ranks, [3, 3, 10, 40, 63]);
    }

    #[test]
    fn a_skewed_distribution_from_a_microsecond_to_an_hour() {
        let histogram = Histogram::new();
        // 900 fast, 90 slow, 9 very slow, 1 of an hour: p50, p90, p99, p99.9 land in each group.
        for _ in 0..900 {
            histogram.record(Duration::from_micros(1));
        }
        for _ in 0..90 {
            histogram.record(Duration::from_millis(250));
        }
        for _ in 0..9 {
            histogram.record(Duration::from_secs(7));
        }
        histogram.record(Duration::from_secs(3600));
        let s = histogram.snapshot();
        assert_eq!(s.percentile(0.5), Some(Duration::from_micros(1)));
        assert_eq!(s.percentile(0.9), Some(Duration::from_micros(1)));
        assert!(within_bucket_error(s.percentile(0.95).unwrap(), Duration::from_millis(250)));
        assert!(within_bucket_error(s.percentile(0.99).unwrap(), Duration::from_millis(250)));
        assert!(within_bucket_error(s.percentile(0.995).unwrap(), Duration::from_secs(7)));
        assert_eq!(s.percentile(1.0), Some(Duration::from_secs(3600)));
        assert_eq!(s.sum(), Duration::from_micros(900) + Duration::from_millis(22_500) + Duration::from_secs(3663));
    }

    #[test]
    fn values_beyond_the_range_keep_an_exact_max_and_sum() {
        let histogram = Histogram::new();
        histogram.record(Duration::from_secs(5 * 3600));
        histogram.record(Duration::from_secs(6 * 3600));
        let s = histogram.snapshot();
        assert_eq!(s.max(), Some(Duration::from_secs(6 * 3600)));
        assert_eq!(s.sum(), Duration::from_secs(11 * 3600));
        assert_eq!(s.cumulative(&[3600.0, 4400.0, f64::INFINITY]), vec![0, 2, 2]);
    }

    #[test]
    fn cumulative_counts_for_prometheus_bounds() {
        let histogram = Histogram::new();
        let millis = [0.5, 1.0, 4.0, 5.0, 6.0, 50.0, 99.0, 100.0, 101.0, 5000.0];
        for ms in millis {
            histogram.record(Duration::from_secs_f64(ms / 1000.0));
        }
        let s = histogram.snapshot();
        let bounds = [0.001, 0.005, 0.01, 0.1, 1.0, 10.0, f64::INFINITY];
        // A bucket straddling a bound is left out of it: 1 ms, 5 ms, 99 and 100 ms sit in
        // buckets that reach past 1, 5 and 100 ms (99 ms shares [98.57, 100.66) ms with 100 ms).
        assert_eq!(s.cumulative(&bounds), vec![1, 3, 5, 6, 9, 10, 10]);
        // Bounds on bucket edges are exact: 2^20 ns holds 1.048576 ms and up.
        assert_eq!(s.cumulative(&[(1u64 << 20) as f64 / 1e9 - 1e-9]), vec![2]);
        assert_eq!(s.cumulative(&[-1.0, f64::NAN, 0.0]), vec![0, 0, 0]);
        let with_every_bound = s.cumulative(&(1..=10_000).map(|ms| ms as f64 / 1e4).collect::<Vec<_>>());
        assert!(with_every_bound.windows(2).all(|w| w[0] <= w[1]), "cumulative counts never decrease");
    }

    #[test]
    fn an_empty_histogram_has_no_percentiles() {
        let s = Histogram::new().snapshot();
        assert_eq!((s.count(), s.sum(), s.max(), s.min(), s.mean()), (0, Duration::ZERO, None, None, None));
        assert_eq!(s.percentile(0.5), None);
        assert_eq!(s.cumulative(&[0.1, f64::INFINITY]), vec![0, 0]);
    }

    #[test]
    fn eight_threads_recording_at_once_lose_nothing() {
        let histogram = Arc::new(Histogram::new());
        const PER_THREAD: u64 = 100_000;
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let histogram = Arc::clone(&histogram);
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        histogram.record(Duration::from_nanos(1 + (i * 7919 + t) % 10_000_000));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let s = histogram.snapshot();
        assert_eq!(s.count(), 8 * PER_THREAD);
        let expected_sum: u64 =
            (0..8u64).flat_map(|t| (0..PER_THREAD).map(move |i| 1 + (i * 7919 + t) % 10_000_000)).sum();
        assert_eq!(s.sum(), Duration::from_nanos(expected_sum));
        assert_eq!(s.cumulative(&[f64::INFINITY]), vec![8 * PER_THREAD]);
    }

    #[test]
    fn since_holds_only_what_came_after() {
        let histogram = Histogram::new();
        for ms in 1..=100 {
            histogram.record(Duration::from_millis(ms));
        }
        let before = histogram.snapshot();
        for _ in 0..99 {
            histogram.record(Duration::from_micros(500));
        }
        histogram.record(Duration::from_secs(3));
        let stretch = histogram.snapshot().since(&before);
        assert_eq!(stretch.count(), 100);
        assert_eq!(stretch.sum(), Duration::from_micros(99 * 500) + Duration::from_secs(3));
        assert!(within_bucket_error(stretch.percentile(0.5).unwrap(), Duration::from_micros(500)));
        assert!(within_bucket_error(stretch.percentile(0.99).unwrap(), Duration::from_micros(500)));
        assert!(within_bucket_error(stretch.percentile(1.0).unwrap(), Duration::from_secs(3)));
        assert!(within_bucket_error(stretch.min().unwrap(), Duration::from_micros(500)));
        let nothing = histogram.snapshot().since(&histogram.snapshot());
        assert_eq!((nothing.count(), nothing.percentile(0.5), nothing.max()), (0, None, None));
    }

    #[test]
    fn merging_adds_counts_and_keeps_extremes() {
        let (a, b) = (Histogram::new(), Histogram::new());
        for ms in 1..=10 {
            a.record(Duration::from_millis(ms));
            b.record(Duration::from_millis(ms * 10));
        }
        let mut total = a.snapshot();
        total.merge(&b.snapshot());
        assert_eq!(total.count(), 20);
        assert_eq!(total.sum(), Duration::from_millis(55 + 550));
        assert_eq!((total.min(), total.max()), (Some(Duration::from_millis(1)), Some(Duration::from_millis(100))));
        assert!(within_bucket_error(total.percentile(0.5).unwrap(), Duration::from_millis(10)));
        let mut empty = HistogramSnapshot::default();
        empty.merge(&a.snapshot());
        assert_eq!(empty, a.snapshot());
    }
}
