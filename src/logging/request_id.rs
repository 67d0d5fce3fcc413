//! Request ids: 32 hex digits, a random per-process prefix and a counter, so that ids are unique
//! within a process, almost surely across processes and restarts, and cost one atomic add.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// One request id: 32 lowercase hex digits (128 bits, like nginx's `$request_id`), kept inline
/// so that making one allocates nothing.
///
/// ```
/// let id = lb_sync::logging::RequestIdGenerator::with_prefix(0xfeed).next_id();
/// assert_eq!(id.as_str(), "000000000000feed0000000000000000");
/// assert_eq!(id.to_string(), id.as_str());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId([u8; 32]);

impl RequestId {
    /// The id as text.
    ///
    /// ```
    /// let id = lb_sync::logging::next_request_id();
    /// assert_eq!(id.as_str().len(), 32);
    /// ```
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored, so this never fails.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.as_str())
    }
}

/// Makes [`RequestId`]s: the first 16 digits are the generator's prefix, the last 16 its
/// counter, so ids from one process sort in the order they were made.
///
/// ```
/// use lb_sync::logging::RequestIdGenerator;
///
/// let ids = RequestIdGenerator::new();
/// let (a, b) = (ids.next_id(), ids.next_id());
/// assert_ne!(a, b);
/// assert_eq!(a.as_str()[..16], b.as_str()[..16], "same process, same prefix");
/// ```
#[derive(Debug)]
pub struct RequestIdGenerator {
    prefix: u64,
    counter: AtomicU64,
}

impl Default for RequestIdGenerator {
    fn default() -> Self {
        RequestIdGenerator::new()
    }
}

impl RequestIdGenerator {
    /// A generator with a random prefix: std's `RandomState` (seeded from the OS's randomness
    /// once per process) hashing the time and the process id, so two processes, or one process
    /// restarted, almost surely never share a prefix.
    ///
    /// ```
    /// use lb_sync::logging::RequestIdGenerator;
    /// assert_ne!(RequestIdGenerator::new().next_id(), RequestIdGenerator::new().next_id());
    /// ```
    pub fn new() -> RequestIdGenerator {
        let mut hasher = RandomState::new().build_hasher();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        hasher.write_u128(now.as_nanos());
        hasher.write_u32(std::process::id());
        RequestIdGenerator::with_prefix(hasher.finish())
    }

    /// A generator with a chosen prefix (for tests, or a prefix naming the instance).
    ///
    /// ```
    /// let ids = lb_sync::logging::RequestIdGenerator::with_prefix(1);
    /// ids.next_id();
    /// assert_eq!(ids.next_id().as_str(), "00000000000000010000000000000001");
    /// ```
    pub fn with_prefix(prefix: u64) -> RequestIdGenerator {
        RequestIdGenerator { prefix, counter: AtomicU64::new(0) }
    }

    /// The next id; safe to call from every thread at once.
    ///
    /// ```
    /// let ids = lb_sync::logging::RequestIdGenerator::with_prefix(u64::MAX);
    /// assert_eq!(ids.next_id().as_str(), "ffffffffffffffff0000000000000000");
    /// ```
    pub fn next_id(&self) -> RequestId {
        let sequence = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut digits = [0u8; 32];
        for (i, digit) in digits.iter_mut().enumerate() {
            let (word, position) = if i < 16 { (self.prefix, i) } else { (sequence, i - 16) };
            *digit = HEX[(word >> (60 - 4 * position) & 0xf) as usize];
        }
        RequestId(digits)
    }
}

/// The next id of the process-wide generator (made on first use).
///
/// ```
/// let (a, b) = (lb_sync::logging::next_request_id(), lb_sync::logging::next_request_id());
/// assert_ne!(a, b);
/// ```
pub fn next_request_id() -> RequestId {
    static GENERATOR: OnceLock<RequestIdGenerator> = OnceLock::new();
    GENERATOR.get_or_init(RequestIdGenerator::new).next_id()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    #[test]
    fn ids_are_hex_and_count_up() {
        let ids = RequestIdGenerator::with_prefix(0x0123_4567_89ab_cdef);
        let texts: Vec<String> = (0..3).map(|_| ids.next_id().to_string()).collect();
        assert_eq!(
            texts,
            [
                "0123456789abcdef0000000000000000",
                "0123456789abcdef0000000000000001",
                "0123456789abcdef0000000000000002"
            ]
        );
        let random = RequestIdGenerator::new().next_id();
        assert!(random.as_str().bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn ids_from_eight_threads_are_all_different() {
        let ids = Arc::new(RequestIdGenerator::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let ids = Arc::clone(&ids);
                std::thread::spawn(move || (0..10_000).map(|_| ids.next_id()).collect::<Vec<_>>())
            })
            .collect();
        let mut seen = HashSet::new();
        for thread in threads {
            for id in thread.join().unwrap() {
                assert!(seen.insert(id), "{id} made twice");
            }
        }
        assert_eq!(seen.len(), 80_000);
    }

    #[test]
    fn generators_get_different_prefixes() {
        let prefixes: HashSet<String> =
            (0..100).map(|_| RequestIdGenerator::new().next_id().as_str()[..16].to_string()).collect();
        assert_eq!(prefixes.len(), 100);
    }
}
