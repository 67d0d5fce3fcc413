//! Random candidates for the power-of-two-choices algorithms (`p2c`, `peak_ewma`): a seedable
//! sequence of random numbers and O(1) draws of a pair of members, in proportion to their
//! weights.
//!
//! The numbers are SplitMix64: a counter and a few multiplications, no lock. Seeded, the
//! counter is one atomic shared by every caller (a relaxed `fetch_add` per pick), and a given
//! seed gives the same pairs in the same order, which is what makes `lb-sync simulate`
//! reproducible. The proxy's algorithms count in each worker thread's own state instead
//! (seeded from the process's random keys): a pick then writes no cache line that the other
//! workers' picks write too. With 8 threads picking at once among 1,000 members (`cargo bench
//! --bench algorithms`, 2 cores) a p2c pick took 31.6 ns with the shared counter and 14.9 ns
//! with each thread's own; peak_ewma 87 ns and 30.8 ns.
//!
//! ```
//! use lb_sync::balance::random::splitmix64;
//!
//! // SplitMix64's published first output for seed 0.
//! assert_eq!(splitmix64(0), 0xe220a8397b1dcdaf);
//! ```

use std::hash::{BuildHasher, Hasher};

use super::{effective_weight, Cursor, Member};

/// SplitMix64's increment (the golden ratio in 64 bits).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output for state `x + GOLDEN`: the finalizer of its `x`-th step.
///
/// ```
/// use lb_sync::balance::random::splitmix64;
/// assert_ne!(splitmix64(1), splitmix64(2));
/// ```
#[must_use]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed that differs between processes (std's randomly keyed hasher), for algorithms the
/// proxy builds: instances of a cluster do not draw the same pairs in lockstep.
#[must_use]
pub fn process_seed() -> u64 {
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// `x` scaled into `0..n`: the high half of `x × n` (Lemire's multiply-shift; unbiased enough
/// for n far below 2^32, with no division).
fn below(x: u32, n: usize) -> usize {
    ((u64::from(x) * n as u64) >> 32) as usize
}

/// A stream of random 64-bit numbers for one algorithm: SplitMix64 over an atomic counter when
/// seeded (one shared sequence, the same for the same seed: `lb-sync simulate`), or over a
/// counter of the calling thread's own (the proxy: no shared cache line that every worker's
/// pick writes, and threads seeded apart so concurrent picks draw different pairs).
#[derive(Debug)]
pub(crate) struct Stream(Source);

#[derive(Debug)]
enum Source {
    Seeded { seed: u64, cursor: Cursor },
    PerThread,
}

thread_local! {
    /// The calling thread's SplitMix64 state for [`Stream::per_thread`], seeded from the
    /// process's random keys (a new key for each thread) on its first use; 0 until then. A
    /// constant initializer makes each access a plain load, where a lazy one checks its state
    /// first.
    static THREAD_STATE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl Stream {
    /// The reproducible stream of `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Stream(Source::Seeded { seed, cursor: Cursor::default() })
    }

    /// Each calling thread's own stream.
    pub(crate) fn per_thread() -> Self {
        Stream(Source::PerThread)
    }

    /// The next number of the stream.
    pub(crate) fn next(&self) -> u64 {
        match &self.0 {
            Source::Seeded { seed, cursor } => {
                let step = cursor.next() as u64;
                splitmix64(seed.wrapping_add(step.wrapping_mul(GOLDEN)))
            }
            Source::PerThread => THREAD_STATE.with(|state| {
                let mut x = state.get();
                if x == 0 {
                    // First use on this thread (a seed of 0 only means one more seeding).
                    x = process_seed();
                }
                let x = x.wrapping_add(GOLDEN);
                state.set(x);
                splitmix64(x)
            }),
        }
    }
}

/// Draws of a member in proportion to its weight in O(1): Vose's alias table, or plain
/// uniform draws when every weight is the same.
#[derive(Debug)]
pub(crate) struct Draw {
    /// Column `i` of the table; empty when the draws are uniform.
    columns: Box<[Column]>,
    uniform: bool,
}

/// One column of the alias table: both halves side by side, so a draw reads one place.
#[derive(Debug, Clone, Copy)]
struct Column {
    /// Below it (of 2^32), a draw landing on this column keeps it.
    threshold: u32,
    /// The member a draw on this column takes at or above the threshold.
    alias: u32,
}

impl Draw {
    /// The table of `members`' weights (0 counts as 1).
    ///
    /// # Panics
    ///
    /// If there are more than `u32::MAX` members.
    pub(crate) fn new(members: &[Member]) -> Self {
        assert!(u32::try_from(members.len()).is_ok(), "too many members");
        let n = members.len();
        let weights: Vec<u64> = members.iter().map(|m| u64::from(effective_weight(m.weight))).collect();
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        if uniform {
            return Draw { columns: Box::new([]), uniform };
        }
        // Vose: scale each weight to n × w / total (exactly, in units of 1/total), split the
        // columns into small (< 1) and large, and top each small column up from a large one.
        let total: u64 = weights.iter().sum();
        let mut scaled: Vec<u128> = weights.iter().map(|&w| u128::from(w) * n as u128).collect();
        let one = u128::from(total);
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| scaled[i] < one);
        let mut columns: Vec<Column> = (0..n as u32).map(|i| Column { threshold: u32::MAX, alias: i }).collect();
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            // A share of 2^32: scaled[s] / total of the column stays with s.
            columns[s] =
                Column { threshold: ((scaled[s] << 32) / one).min(u128::from(u32::MAX)) as u32, alias: l as u32 };
            scaled[l] -= one - scaled[s];
            if scaled[l] < one {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left is (up to rounding) exactly one column's worth: it keeps itself.
        Draw { columns: columns.into_boxed_slice(), uniform }
    }

    /// The member a random `x` lands on (`n` members, n >= 1).
    pub(crate) fn one(&self, x: u64, n: usize) -> usize {
        let column = below(x as u32, n);
        if self.uniform {
            return column;
        }
        let Column { threshold, alias } = self.columns[column];
        // Keep or alias by a mask, not a branch: the side a draw lands on is a coin toss that a
        // branch predictor would miss about as often as not.
        let keep = usize::from(((x >> 32) as u32) < threshold).wrapping_neg();
        (column & keep) | (alias as usize & !keep)
    }

    /// Two different members (n >= 2), drawn in proportion to their weights, from the stream.
    /// The first is drawn freely; the second is drawn again when it equals the first, and
    /// after a second clash is taken uniformly among the others (bounded work, and a heavy
    /// member is still compared with someone).
    pub(crate) fn pair(&self, stream: &Stream, n: usize) -> (usize, usize) {
        let x = stream.next();
        if self.uniform {
            // Both from one number: the low half picks the first, the high half the second
            // among the n - 1 others.
            let a = below(x as u32, n);
            let mut b = below((x >> 32) as u32, n - 1);
            if b >= a {
                b += 1;
            }
            return (a, b);
        }
        let a = self.one(x, n);
        let y = splitmix64(x);
        let mut b = self.one(y, n);
        if b == a {
            b = self.one(splitmix64(y), n);
        }
        if b == a {
            b = below((y >> 16) as u32, n - 1);
            if b >= a {
                b += 1;
            }
        }
        (a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(weights: &[u32]) -> Vec<Member> {
        weights.iter().enumerate().map(|(i, &w)| Member::new(format!("m{i}"), w)).collect()
    }

    #[test]
    fn splitmix_matches_the_reference_sequence() {
        // The reference generator's outputs for seed 0: state advances by GOLDEN each call.
        let stream = Stream::new(0);
        assert_eq!(stream.next(), 0xe220a8397b1dcdaf);
        assert_eq!(stream.next(), 0x6e789e6aa1b965f4);
        assert_eq!(stream.next(), 0x06c45d188009454f);
    }

    #[test]
    fn alias_draws_follow_the_weights() {
        for weights in [&[1, 2, 1][..], &[5, 1, 1], &[1, 7, 2, 9, 4], &[3, 3, 3, 4]] {
            let draw = Draw::new(&members(weights));
            let n = weights.len();
            let total: u32 = weights.iter().sum();
            let draws = 400_000u64;
            let mut counts = vec![0u64; n];
            for i in 0..draws {
                counts[draw.one(splitmix64(i), n)] += 1;
            }
            for (i, &w) in weights.iter().enumerate() {
                let expected = draws as f64 * f64::from(w) / f64::from(total);
                let off = (counts[i] as f64 - expected).abs() / expected;
                assert!(off < 0.02, "{weights:?}: member {i} got {} for {expected}", counts[i]);
            }
        }
    }

    #[test]
    fn each_thread_draws_its_own_sequence() {
        let firsts = || {
            let stream = Stream::per_thread();
            (0..4).map(|_| stream.next()).collect::<Vec<u64>>()
        };
        let a = std::thread::spawn(firsts).join().unwrap();
        let b = std::thread::spawn(firsts).join().unwrap();
        assert_ne!(a, b, "two threads drew the same numbers");
        // Within a thread the numbers go on: two streams there share one sequence.
        let (one, two) = (Stream::per_thread(), Stream::per_thread());
        assert_ne!(one.next(), two.next());
        // Pairs from a per-thread stream are as from a seeded one: two different members.
        let draw = Draw::new(&members(&[1, 2, 1]));
        assert!((0..1000).all(|_| {
            let (x, y) = draw.pair(&one, 3);
            x != y && x < 3 && y < 3
        }));
    }

    #[test]
    fn pairs_are_two_different_members() {
        for weights in [&[1, 1][..], &[1, 1, 1], &[100, 1], &[1, 2, 1], &[1000, 1, 1]] {
            let draw = Draw::new(&members(weights));
            let stream = Stream::new(7);
            for _ in 0..10_000 {
                let (a, b) = draw.pair(&stream, weights.len());
                assert_ne!(a, b, "{weights:?}");
                assert!(a < weights.len() && b < weights.len());
            }
        }
    }

    #[test]
    fn uniform_pairs_cover_every_ordered_pair_evenly() {
        let draw = Draw::new(&members(&[1, 1, 1]));
        let stream = Stream::new(1);
        let mut counts = [[0u32; 3]; 3];
        for _ in 0..60_000 {
            let (a, b) = draw.pair(&stream, 3);
            counts[a][b] += 1;
        }
        for (a, row) in counts.iter().enumerate() {
            for (b, &c) in row.iter().enumerate() {
                if a == b {
                    assert_eq!(c, 0);
                } else {
                    assert!((9_000..11_000).contains(&c), "{a},{b}: {c}");
                }
            }
        }
    }
}
