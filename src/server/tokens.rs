//! Maps keyed by a poller's connection tokens. The tokens are numbers the poller hands out
//! itself, one after another, so no client can choose them: SipHash's defence against chosen
//! keys (std's default) buys nothing here, and a request looks its connection up about ten
//! times on its way through a poller. One multiplication spreads them instead.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map from connection tokens to `V`, hashed with [`TokenHasher`].
pub(crate) type TokenMap<V> = HashMap<usize, V, BuildHasherDefault<TokenHasher>>;

/// Hashes one token: multiplied by an odd constant (the golden ratio's, as Fibonacci hashing
/// does), which moves the low bits of consecutive tokens into the high bits the map's control
/// bytes are taken from, and keeps distinct tokens distinct in the low bits its buckets use.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TokenHasher(u64);

impl Hasher for TokenHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `usize` keys are hashed here; any other input is still hashed, byte by byte.
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, token: usize) {
        self.0 = (token as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_tokens_spread_over_the_high_and_the_low_bits() {
        let hash = |token: usize| {
            let mut hasher = TokenHasher::default();
            hasher.write_usize(token);
            hasher.finish()
        };
        let high: std::collections::HashSet<u64> = (0..128).map(|t| hash(t) >> 57).collect();
        let low: std::collections::HashSet<u64> = (0..1024).map(|t| hash(t) & 1023).collect();
        assert!(high.len() > 64, "{} of 128 control values", high.len());
        assert_eq!(low.len(), 1024);
    }

    #[test]
    fn a_map_keeps_and_finds_many_tokens() {
        let mut map: TokenMap<usize> = TokenMap::default();
        for token in 0..10_000 {
            map.insert(token * 3, token);
        }
        assert!((0..10_000).all(|token| map.get(&(token * 3)) == Some(&token)));
        assert!(!map.contains_key(&1));
    }
}
