//! Latency-aware picks: power of two choices by a peak-sensitive moving average of response
//! time times the requests in flight (Finagle's and Linkerd's `PeakEwma`).

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{effective_weight, Algorithm, Member, P2c, PickContext};

/// The default decay window: Finagle's and Linkerd's 10 s.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// `estimate` of a cell that has measured nothing yet (new, or forgotten at a recovery).
const UNMEASURED: u64 = u64::MAX;

/// Nanoseconds since the first call in this process: the clock the proxy observes response
/// times with (monotonic; `lb-sync simulate` uses its simulated time instead).
///
/// ```
/// let a = lb_sync::balance::peak_ewma::now();
/// assert!(lb_sync::balance::peak_ewma::now() >= a);
/// ```
#[must_use]
pub fn now() -> u64 {
    at(Instant::now())
}

/// [`now`] at `instant`, a clock reading the caller already has (0 before the first call).
///
/// ```
/// use std::time::{Duration, Instant};
/// use lb_sync::balance::peak_ewma::{at, now};
/// now(); // the clock starts at its first reading
/// let t = Instant::now();
/// assert_eq!(at(t + Duration::from_millis(1)) - at(t), 1_000_000);
/// ```
#[must_use]
pub fn at(instant: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    instant.saturating_duration_since(*EPOCH.get_or_init(Instant::now)).as_nanos() as u64
}

/// One backend's response-time estimate, peak-sensitive and decaying, in atomics only (no
/// lock: every answer writes it, every peak_ewma pick reads it).
///
/// With `τ` the window and `Δ` the time since the last answer:
/// - between answers the estimate decays toward zero, `e × exp(-Δ/τ)`, so a backend that is
///   avoided because it was slow is tried again after a while (and measured afresh);
/// - an answer slower than the (decayed) estimate replaces it at once: the *peak*, so a
///   backend that turns slow is avoided from its first slow answer;
/// - a faster answer is averaged in, `e × exp(-Δ/τ) + rtt × (1 - exp(-Δ/τ))`: the time-weighted
///   moving average of the answers of about the last window (a steady answer time is its own
///   estimate).
///
/// A cell that has measured nothing reads as `None`; [`PeakEwma`] then starts it at the median
/// of the others (not at zero, which would send it every request until its first answer).
///
/// ```
/// use std::time::Duration;
/// use lb_sync::balance::ResponseTime;
///
/// let ms = 1_000_000u64; // nanoseconds
/// let cell = ResponseTime::new(Duration::from_secs(10));
/// assert_eq!(cell.estimate(0), None);
/// cell.observe(Duration::from_millis(20), 0);
/// assert_eq!(cell.estimate(0), Some(20.0 * ms as f64));
/// // A slower answer is taken at once; a faster one only moves it a little.
/// cell.observe(Duration::from_millis(200), ms);
/// assert_eq!(cell.estimate(ms), Some(200.0 * ms as f64));
/// cell.observe(Duration::from_millis(10), 2 * ms);
/// assert!(cell.estimate(2 * ms).unwrap() > 199.0 * ms as f64);
/// // Ten windows without an answer: almost nothing left.
/// assert!(cell.estimate(100_000 * ms).unwrap() < 0.01 * ms as f64);
/// ```
#[derive(Debug)]
pub struct ResponseTime {
    /// The estimate in nanoseconds (`f64` bits) as of `stamp`, or [`UNMEASURED`].
    estimate: AtomicU64,
    /// When `estimate` was last written, in nanoseconds of the caller's clock.
    stamp: AtomicU64,
    /// 1/τ, τ the decay window in nanoseconds (>= 1), as `f64` bits: a pick multiplies by it
    /// rather than divide.
    inverse_window: AtomicU64,
}

impl ResponseTime {
    /// A cell that has measured nothing, decaying over `window`.
    #[must_use]
    pub fn new(window: Duration) -> Self {
        ResponseTime {
            estimate: AtomicU64::new(UNMEASURED),
            stamp: AtomicU64::new(0),
            inverse_window: AtomicU64::new(inverse(window)),
        }
    }

    /// A new window (a reload); the estimate is kept.
    pub fn set_window(&self, window: Duration) {
        self.inverse_window.store(inverse(window), AtomicOrdering::Relaxed);
    }

    /// The decay window.
    #[must_use]
    pub fn window(&self) -> Duration {
        Duration::from_nanos((1.0 / f64::from_bits(self.inverse_window.load(AtomicOrdering::Relaxed))).round() as u64)
    }

    /// `exp(-Δ/τ)` for the time since the last write.
    fn decay(&self, now: u64) -> f64 {
        exp_neg(self.windows_since(now))
    }

    /// Δ/τ: windows passed since the last write.
    fn windows_since(&self, now: u64) -> f64 {
        let elapsed = now.saturating_sub(self.stamp.load(AtomicOrdering::Acquire));
        // Through i64: x86-64 converts a signed integer in one instruction, an unsigned one in
        // five (a pick converts two). 2^63 ns is 292 years.
        let elapsed = i64::try_from(elapsed).unwrap_or(i64::MAX);
        elapsed as f64 * f64::from_bits(self.inverse_window.load(AtomicOrdering::Relaxed))
    }

    /// The estimate as last written and Δ/τ since: the estimate now is `e × exp(-Δ/τ)`. Two
    /// members are compared with one `exp` of the difference of their Δ/τ, not one each.
    fn undecayed(&self, now: u64) -> Option<(f64, f64)> {
        let bits = self.estimate.load(AtomicOrdering::Acquire);
        (bits != UNMEASURED).then(|| (f64::from_bits(bits), self.windows_since(now)))
    }

    /// Takes in one answer that took `took`, at `now` (nanoseconds).
    pub fn observe(&self, took: Duration, now: u64) {
        let rtt = took.as_nanos() as f64;
        let w = self.decay(now);
        // fetch_update retries on a concurrent write: both answers count.
        let _ = self.estimate.fetch_update(AtomicOrdering::AcqRel, AtomicOrdering::Acquire, |bits| {
            let next = if bits == UNMEASURED {
                rtt
            } else {
                let decayed = f64::from_bits(bits) * w;
                if rtt > decayed {
                    rtt
                } else {
                    decayed + rtt * (1.0 - w)
                }
            };
            Some(next.to_bits())
        });
        self.stamp.fetch_max(now, AtomicOrdering::AcqRel);
    }

    /// The estimate at `now` in nanoseconds (decayed since the last answer); `None` when it has
    /// measured nothing.
    #[must_use]
    pub fn estimate(&self, now: u64) -> Option<f64> {
        let bits = self.estimate.load(AtomicOrdering::Acquire);
        (bits != UNMEASURED).then(|| f64::from_bits(bits) * self.decay(now))
    }

    /// Starts an unmeasured cell at `value` (nanoseconds) as of `now`; a measured one is left
    /// alone (an answer came first).
    pub fn seed(&self, value: f64, now: u64) {
        let seeded = self.estimate.compare_exchange(
            UNMEASURED,
            value.to_bits(),
            AtomicOrdering::AcqRel,
            AtomicOrdering::Acquire,
        );
        if seeded.is_ok() {
            self.stamp.fetch_max(now, AtomicOrdering::AcqRel);
        }
    }

    /// Forgets what it measured (a backend that recovers): it starts again at the table's
    /// median, not at the near-zero its estimate decayed to while it was away.
    pub fn forget(&self) {
        self.estimate.store(UNMEASURED, AtomicOrdering::Release);
    }
}

/// `e^-x` for `x >= 0`, to about one part in ten million: for a small `x` (two answers close
/// in time, the usual case) its series to `x³`, else `2^-(x log2 e)` with the nearest integer
/// of the exponent put into the float's exponent bits and the rest, within ±½, by a polynomial.
/// A pick decays one cost by the other's age; libm's `exp`, exact to the last bit, costs several
/// times this, and a comparison of costs needs nothing like that precision.
fn exp_neg(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return 1.0;
    }
    if x < 1.0 / 1024.0 {
        // The next term, x⁴/24, is below 1e-13.
        // × 1/6, not ÷ 6: a division is the slowest step of a pick.
        return 1.0 - x * (1.0 - x * (0.5 - x * (1.0 / 6.0)));
    }
    if x >= 700.0 {
        return 0.0;
    }
    let y = x * std::f64::consts::LOG2_E;
    // y > 0: adding ½ and truncating rounds to nearest in one instruction (f64::round and
    // floor are libm calls on x86-64's baseline).
    let n = (y + 0.5) as u64;
    let f = y - n as f64;
    // 2^-f = e^t with t = -f ln 2, |t| <= 0.35: its series to t⁶ (the next term is below 1.3e-7
    // of the value).
    let t = -f * std::f64::consts::LN_2;
    let p = 1.0 + t * (1.0 + t * (0.5 + t * (1.0 / 6.0 + t * (1.0 / 24.0 + t * (1.0 / 120.0 + t / 720.0)))));
    // 2^-n: n <= 1010 here, so the exponent stays normal.
    p * f64::from_bits((1023 - n) << 52)
}

/// `1/τ` (τ in nanoseconds, at least 1) as `f64` bits.
fn inverse(window: Duration) -> u64 {
    (1.0 / (window.as_nanos() as u64).max(1) as f64).to_bits()
}

/// Each member's response-time cell, as peak_ewma reads them.
pub trait ResponseTimes {
    /// Member `i`'s cell (an index into the slice the algorithm was built from).
    fn of(&self, i: usize) -> &ResponseTime;
    /// The time now, in nanoseconds of the clock the cells observe with.
    fn now(&self) -> u64;
}

/// Latency-aware power of two choices (Finagle's and Linkerd's peak EWMA balancer): each pick
/// draws two members as [`P2c`](super::P2c) does and takes the one with the lower cost,
/// `response time estimate × (in-flight + 1) ÷ weight`, the estimate being the member's
/// [`ResponseTime`]. A member that answers slowly, or has many requests waiting, costs more;
/// one that has measured nothing yet (new, or back from down) starts at the median of the
/// others. Reading a cost is a few atomic loads and an `exp`: O(1) per pick, no lock.
///
/// Without response times in the context (`ctx.response_times` is `None`) every estimate is
/// equal and this is [`P2c`](super::P2c).
///
/// ```
/// use std::time::Duration;
/// use lb_sync::balance::{Algorithm, Member, PeakEwma, PickContext, ResponseTime, ResponseTimes};
///
/// struct Cells(Vec<ResponseTime>);
/// impl ResponseTimes for Cells {
///     fn of(&self, i: usize) -> &ResponseTime { &self.0[i] }
///     fn now(&self) -> u64 { 0 }
/// }
/// let cells = Cells((0..2).map(|_| ResponseTime::new(Duration::from_secs(10))).collect());
/// cells.0[0].observe(Duration::from_millis(100), 0); // slow
/// cells.0[1].observe(Duration::from_millis(10), 0); // fast
/// let algo = PeakEwma::with_seed(&[Member::new("slow", 1), Member::new("fast", 1)], 1);
/// let loads = [0, 5];
/// let ctx = PickContext { in_flight: &|i| loads[i], response_times: Some(&cells), ..PickContext::idle() };
/// // 10 ms × (5 + 1) = 60 < 100 ms × 1: the fast one, busy as it is.
/// assert_eq!(algo.select(&ctx, &mut |_| true), Some(1));
/// ```
#[derive(Debug)]
pub struct PeakEwma {
    /// The pairs it draws, and its order when no response times are known.
    p2c: P2c,
    /// 1 / weight, so that a cost is multiplied, not divided.
    inverse_weights: Box<[f64]>,
}

impl PeakEwma {
    /// Peak EWMA over `members`, drawing from each calling thread's own random stream (seeded from
    /// the process's random keys): what the proxy uses.
    #[must_use]
    pub fn new(members: &[Member]) -> Self {
        PeakEwma { p2c: P2c::new(members), inverse_weights: inverse_weights(members) }
    }

    /// The same with a fixed seed: the same seed draws the same pairs (as [`P2c`]'s).
    #[must_use]
    pub fn with_seed(members: &[Member], seed: u64) -> Self {
        PeakEwma { p2c: P2c::with_seed(members, seed), inverse_weights: inverse_weights(members) }
    }

    /// Member `i`'s cost at `now` as (cost before decay, Δ/τ): the cost is `c × exp(-Δ/τ)`. An
    /// unmeasured member is started at the median of the measured ones (the one O(n) step,
    /// once per new or recovered member).
    #[inline(always)]
    fn cost(&self, ctx: &PickContext<'_>, cells: &dyn ResponseTimes, now: u64, i: usize) -> (f64, f64) {
        let (estimate, windows) = match cells.of(i).undecayed(now) {
            Some(parts) => parts,
            None => self.start_at_median(cells, now, i),
        };
        // u32 converts to f64 in one instruction; more in flight than that is not a thing.
        let in_flight = u32::try_from((ctx.in_flight)(i)).unwrap_or(u32::MAX);
        // A floor of 1 ns: with nothing measured anywhere the costs are the in-flight counts,
        // as p2c's.
        (estimate.max(1.0) * (f64::from(in_flight) + 1.0) * self.inverse_weights[i], windows)
    }

    /// Seeds member `i`'s unmeasured cell at the median and returns its (estimate, Δ/τ). Out of
    /// line: it runs once per new or recovered member, and inlined its O(n) scan would make
    /// every pick's frame larger.
    #[cold]
    #[inline(never)]
    fn start_at_median(&self, cells: &dyn ResponseTimes, now: u64, i: usize) -> (f64, f64) {
        let cell = cells.of(i);
        let median = median_estimate(cells, self.p2c.members(), now);
        cell.seed(median, now);
        cell.undecayed(now).unwrap_or((median, 0.0))
    }

    /// Compares the costs of members `a` and `b`: `ca e^-xa` against `cb e^-xb`, as `ca e^-(xa-xb)`
    /// against `cb` (or `ca` against `cb e^-(xb-xa)`), so one `exp` per comparison. Which side
    /// is decayed is a select, not a branch: it is a coin toss on every pick.
    fn compare(&self, ctx: &PickContext<'_>, cells: &dyn ResponseTimes, now: u64, a: usize, b: usize) -> Ordering {
        let ((ca, xa), (cb, xb)) = (self.cost(ctx, cells, now, a), self.cost(ctx, cells, now, b));
        let d = xa - xb;
        let decay = exp_neg(d.abs());
        let a_older = d >= 0.0;
        let lhs = ca * if a_older { decay } else { 1.0 };
        let rhs = cb * if a_older { 1.0 } else { decay };
        lhs.total_cmp(&rhs)
    }
}

/// 1 / weight of each member.
fn inverse_weights(members: &[Member]) -> Box<[f64]> {
    members.iter().map(|m| 1.0 / f64::from(effective_weight(m.weight))).collect()
}

/// The median estimate of the measured members at `now`; 0 when none is measured.
fn median_estimate(cells: &dyn ResponseTimes, n: usize, now: u64) -> f64 {
    let mut measured: Vec<f64> = (0..n).filter_map(|i| cells.of(i).estimate(now)).collect();
    if measured.is_empty() {
        return 0.0;
    }
    let middle = measured.len() / 2;
    let (_, median, _) = measured.select_nth_unstable_by(middle, f64::total_cmp);
    *median
}

impl Algorithm for PeakEwma {
    fn select(&self, ctx: &PickContext<'_>, usable: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        match ctx.response_times {
            Some(cells) => {
                let now = cells.now();
                let compare = |a: usize, b: usize| -> Ordering { self.compare(ctx, cells, now, a, b) };
                // The failover sorts costs decayed to now (`total_cmp`: a total order).
                let rank = |i: usize| {
                    let (cost, windows) = self.cost(ctx, cells, now, i);
                    cost * exp_neg(windows)
                };
                self.p2c.choose(&compare, &rank, &f64::total_cmp, usable)
            }
            None => self.p2c.select(ctx, usable),
        }
    }

    fn name(&self) -> &'static str {
        "peak_ewma"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Cells(Vec<ResponseTime>, u64);
    impl ResponseTimes for Cells {
        fn of(&self, i: usize) -> &ResponseTime {
            &self.0[i]
        }
        fn now(&self) -> u64 {
            self.1
        }
    }

    fn cells(n: usize, now: u64) -> Cells {
        Cells((0..n).map(|_| ResponseTime::new(DEFAULT_WINDOW)).collect(), now)
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn exp_neg_is_close_to_exp() {
        let mut x = 0.0;
        while x < 60.0 {
            let (fast, exact) = (exp_neg(x), (-x).exp());
            assert!((fast - exact).abs() <= exact * 2e-7, "{x}: {fast} vs {exact}");
            x += if x < 0.01 { 0.000_137 } else { 0.0137 };
        }
        assert_eq!(exp_neg(0.0), 1.0);
        assert_eq!(exp_neg(-1.0), 1.0);
        assert_eq!(exp_neg(1e6), 0.0);
        assert!(exp_neg(699.0) > 0.0);
    }

    #[test]
    fn decay_follows_the_window() {
        let cell = ResponseTime::new(Duration::from_secs(1));
        cell.observe(Duration::from_millis(100), 0);
        let after_one_window = cell.estimate(1_000 * MS).unwrap();
        assert!((after_one_window - 100.0 * MS as f64 * (-1f64).exp()).abs() < 1000.0);
    }

    #[test]
    fn faster_answers_pull_the_estimate_down_over_time() {
        let cell = ResponseTime::new(Duration::from_secs(1));
        cell.observe(Duration::from_millis(100), 0);
        // 10 ms answers every 100 ms for 5 s: the estimate ends near 10 ms.
        for k in 1..=50 {
            cell.observe(Duration::from_millis(10), k * 100 * MS);
        }
        let e = cell.estimate(5_000 * MS).unwrap() / MS as f64;
        assert!((10.0..11.0).contains(&e), "{e}");
    }

    #[test]
    fn forget_and_seed() {
        let cell = ResponseTime::new(DEFAULT_WINDOW);
        cell.observe(Duration::from_millis(5), 0);
        cell.forget();
        assert_eq!(cell.estimate(0), None);
        cell.seed(7.0, 0);
        assert_eq!(cell.estimate(0), Some(7.0));
        cell.seed(9.0, 0);
        assert_eq!(cell.estimate(0), Some(7.0), "a measured cell is not seeded over");
    }

    #[test]
    fn a_new_member_starts_at_the_median_not_at_zero() {
        let members: Vec<Member> = (0..4).map(|i| Member::new(format!("m{i}"), 1)).collect();
        let cells = cells(4, 0);
        for (i, ms) in [10u64, 20, 30].iter().enumerate() {
            cells.0[i].observe(Duration::from_millis(*ms), 0);
        }
        let algo = PeakEwma::with_seed(&members, 2);
        let ctx = PickContext { response_times: Some(&cells), ..PickContext::idle() };
        // Member 3 has measured nothing; once it takes part in a duel it is seeded at 20 ms.
        for _ in 0..100 {
            algo.select(&ctx, &mut |_| true);
        }
        assert_eq!(cells.0[3].estimate(0), Some(20.0 * MS as f64));
    }

    #[test]
    fn the_slow_member_loses_its_duels() {
        let members: Vec<Member> = (0..3).map(|i| Member::new(format!("m{i}"), 1)).collect();
        let cells = cells(3, 0);
        cells.0[0].observe(Duration::from_millis(10), 0);
        cells.0[1].observe(Duration::from_millis(10), 0);
        cells.0[2].observe(Duration::from_millis(100), 0);
        let algo = PeakEwma::with_seed(&members, 4);
        let ctx = PickContext { response_times: Some(&cells), ..PickContext::idle() };
        assert!((0..1000).all(|_| algo.select(&ctx, &mut |_| true) != Some(2)));
    }
}
