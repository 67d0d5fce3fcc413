//! The fixed hash of ip_hash: FNV-1a 64-bit followed by murmur3's `fmix64`
//! finalizer.
//!
//! Both halves are fully specified, unseeded, public algorithms, so a client
//! maps to the same backend across restarts, machines, processes of a
//! cluster and Rust versions (std's `DefaultHasher` guarantees none of that).
//! FNV-1a alone mixes short inputs poorly (a 4-byte IPv4 address only
//! touches the low bits much); `fmix64` spreads every input bit over the
//! whole 64-bit output, which a ring lookup needs.
//!
//! ```
//! use lb_sync::balance::hash::{fmix64, fnv1a64, hash64};
//!
//! assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
//! assert_eq!(hash64(b"a"), fmix64(fnv1a64(b"a")));
//! ```

/// FNV-1a 64-bit offset basis (the hash of no bytes).
pub const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV 64-bit prime.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64-bit of `bytes`: for each byte, xor it in, then multiply by
/// [`FNV_PRIME`] (wrapping).
///
/// ```
/// use lb_sync::balance::hash::fnv1a64;
///
/// assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
/// assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
/// ```
#[must_use]
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// murmur3's 64-bit finalizer (`fmix64`): a bijection with full avalanche.
///
/// ```
/// use lb_sync::balance::hash::fmix64;
///
/// assert_eq!(fmix64(0), 0);
/// assert_eq!(fmix64(1), 0xb456bcfc34c2cb2c);
/// ```
#[must_use]
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The hash used by ip_hash for both ring points and keys:
/// `fmix64(fnv1a64(bytes))`.
///
/// ```
/// use lb_sync::balance::hash::hash64;
///
/// assert_eq!(hash64(b"backend1-0"), 0xc276532faec4b5f3);
/// assert_eq!(hash64(&[10, 0, 0, 1]), 0x251ce681282fdaa9);
/// ```
#[must_use]
pub fn hash64(bytes: &[u8]) -> u64 {
    fmix64(fnv1a64(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from the FNV reference and murmur3, cross-checked with an
    // independent Python implementation.
    #[test]
    fn fnv1a64_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn fmix64_vectors() {
        assert_eq!(fmix64(0), 0);
        assert_eq!(fmix64(1), 0xb456bcfc34c2cb2c);
    }

    #[test]
    fn hash64_vectors() {
        assert_eq!(hash64(b""), 0xefd01f60ba992926);
        assert_eq!(hash64(b"a"), 0x82a2a958a9bece5b);
        assert_eq!(hash64(b"foobar"), 0x2c22194922d1672b);
        assert_eq!(hash64(b"backend1-0"), 0xc276532faec4b5f3);
        assert_eq!(hash64(&[10, 0, 0, 1]), 0x251ce681282fdaa9);
    }
}
