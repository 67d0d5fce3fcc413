//! Consistent hashing of the client IP on a ketama ring.

use std::fmt::Write as _;

use super::hash::hash64;
use super::{effective_weight, Algorithm, Member, Offered, PickContext};

/// Ring points per unit of weight (ketama's and nginx's 160).
pub const POINTS_PER_WEIGHT: u32 = 160;

/// Weights above this count as this on the ring, so one member has at most
/// `160 * 100` points and the ring stays small (a weight ratio beyond 100:1
/// is flattened to 100:1).
pub const MAX_RING_WEIGHT: u32 = 100;

/// Consistent hashing of a key (the client IP) on a ketama ring, like
/// nginx's `hash $remote_addr consistent`.
///
/// Each member owns `160 × weight` points of a 64-bit ring; point `i` of a
/// member sits at `hash64("{id}-{i}")` (see [`super::hash`]). A key goes to
/// the owner of the first point at or after `hash64(key)`, wrapping around.
/// Points depend on the member's `id` only, never on its position in the
/// slice, so removing one member of N moves only that member's clients
/// (about 1/N of them) and they come back when it returns. A refused member
/// is skipped by walking clockwise to the next distinct member, which is
/// exactly where its clients would go if it were removed, so the other
/// members' clients never move.
///
/// Ids should be unique: two members with the same id share the same points
/// (the lower index wins).
///
/// ```
/// use lb_sync::balance::{Algorithm, IpHash, Member, PickContext};
///
/// let members = [Member::new("backend1", 1), Member::new("backend2", 2), Member::new("backend3", 1)];
/// let ring = IpHash::new(&members);
/// let ip = [192, 0, 2, 7];
/// let ctx = PickContext::with_key(&ip);
/// let first = ring.select(&ctx, &mut |_| true).unwrap();
/// // Same IP, same member.
/// assert_eq!(ring.select(&ctx, &mut |_| true), Some(first));
/// // If that member is refused, the IP goes to another one.
/// let other = ring.select(&ctx, &mut |i| i != first).unwrap();
/// assert_ne!(other, first);
/// ```
#[derive(Debug)]
pub struct IpHash {
    /// Point positions, ascending (dense, for the binary search).
    points: Box<[u64]>,
    /// `owners[j]` is the member index owning `points[j]`.
    owners: Box<[u32]>,
    /// `buckets[b]` is the index of the first point whose top bits (`64 -
    /// shift` of them) are >= `b`; one extra entry holds the point count. It
    /// narrows the binary search to a few points: a large ring does not fit
    /// in cache, and a plain binary search over it costs a cache miss per
    /// level.
    buckets: Box<[u32]>,
    shift: u32,
    members: usize,
}

impl IpHash {
    /// The ring of `members` (weight 0 counts as 1, weights above
    /// [`MAX_RING_WEIGHT`] as that).
    ///
    /// # Panics
    ///
    /// If there are more than `u32::MAX` members or ring points.
    #[must_use]
    pub fn new(members: &[Member]) -> Self {
        assert!(u32::try_from(members.len()).is_ok(), "too many members");
        let count: usize = members.iter().map(|m| ring_weight(m.weight) as usize * POINTS_PER_WEIGHT as usize).sum();
        let mut ring: Vec<(u64, u32)> = Vec::with_capacity(count);
        let mut name = String::new();
        for (index, member) in members.iter().enumerate() {
            for i in 0..ring_weight(member.weight) * POINTS_PER_WEIGHT {
                name.clear();
                // Writing to a String cannot fail.
                let _ = write!(name, "{}-{}", member.id, i);
                ring.push((hash64(name.as_bytes()), index as u32));
            }
        }
        // Equal positions (vanishingly rare) are ordered by id, then index,
        // so the ring does not depend on the order of the members.
        ring.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| members[a.1 as usize].id.cmp(&members[b.1 as usize].id)).then(a.1.cmp(&b.1))
        });
        assert!(u32::try_from(ring.len()).is_ok(), "too many ring points");
        let points: Box<[u64]> = ring.iter().map(|p| p.0).collect();
        // About 4 points per bucket, at most 2^20 buckets (4 MiB).
        let bits = points.len().max(2).ilog2().saturating_sub(2).clamp(1, 20);
        let shift = 64 - bits;
        let mut buckets = Vec::with_capacity((1 << bits) + 1);
        let mut j = 0;
        for b in 0..1u64 << bits {
            while j < points.len() && points[j] >> shift < b {
                j += 1;
            }
            buckets.push(j as u32);
        }
        buckets.push(points.len() as u32);
        IpHash {
            points,
            owners: ring.iter().map(|p| p.1).collect(),
            buckets: buckets.into_boxed_slice(),
            shift,
            members: members.len(),
        }
    }

    /// Index of the first point at or after `key`, wrapping to 0. Points of
    /// `key`'s bucket share its top bits; those before the bucket are
    /// smaller, those after it larger.
    fn first_point(&self, key: u64) -> usize {
        let b = (key >> self.shift) as usize;
        let (lo, hi) = (self.buckets[b] as usize, self.buckets[b + 1] as usize);
        let at = lo + self.points[lo..hi].partition_point(|&p| p < key);
        if at == self.points.len() {
            0
        } else {
            at
        }
    }
}

fn ring_weight(weight: u32) -> u32 {
    effective_weight(weight).min(MAX_RING_WEIGHT)
}

impl Algorithm for IpHash {
    /// Hashes `ctx.hash_key` (an empty key is hashed too: every such pick
    /// goes to the same member).
    fn select(&self, ctx: &PickContext<'_>, usable: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        if self.members == 0 {
            return None;
        }
        let start = self.first_point(hash64(ctx.hash_key));
        let first = self.owners[start] as usize;
        if usable(first) {
            return Some(first);
        }
        if self.members == 1 {
            return None;
        }
        // Failover: walk clockwise offering each other member once. One turn
        // of the ring passes every member, so this ends.
        let mut offered = Offered::new(self.members);
        offered.insert(first);
        let mut refused = 1;
        let clockwise = self.owners[start + 1..].iter().chain(&self.owners[..start]);
        for &member in clockwise {
            let member = member as usize;
            if !offered.insert(member) {
                continue;
            }
            if usable(member) {
                return Some(member);
            }
            refused += 1;
            if refused == self.members {
                break;
            }
        }
        None
    }

    fn name(&self) -> &'static str {
        "ip_hash"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_per_member_follow_capped_weights() {
        let members = [Member::new("a", 0), Member::new("b", 3), Member::new("c", 1000)];
        let ring = IpHash::new(&members);
        let count = |m: u32| ring.owners.iter().filter(|&&o| o == m).count();
        assert_eq!(count(0), 160);
        assert_eq!(count(1), 480);
        assert_eq!(count(2), 16_000);
        assert!(ring.points.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn bucket_lookup_equals_plain_binary_search() {
        for n in [1, 3, 50, 700] {
            let members: Vec<Member> = (0..n).map(|i| Member::new(format!("m{i}"), 1 + i % 4)).collect();
            let ring = IpHash::new(&members);
            let plain = |key: u64| {
                let at = ring.points.partition_point(|&p| p < key);
                if at == ring.points.len() {
                    0
                } else {
                    at
                }
            };
            let mut keys = vec![0, 1, u64::MAX, u64::MAX - 1, 1 << 63];
            keys.extend(ring.points.iter().flat_map(|&p| [p.wrapping_sub(1), p, p.wrapping_add(1)]));
            keys.extend((0u32..20_000).map(|i| hash64(&i.to_le_bytes())));
            for key in keys {
                assert_eq!(ring.first_point(key), plain(key), "n={n} key={key:#x}");
            }
        }
    }

    #[test]
    fn member_order_does_not_change_the_mapping() {
        let a = [Member::new("x", 1), Member::new("y", 2), Member::new("z", 1)];
        let b = [a[2].clone(), a[0].clone(), a[1].clone()];
        let (ra, rb) = (IpHash::new(&a), IpHash::new(&b));
        for i in 0u32..1000 {
            let key = i.to_be_bytes();
            let ctx = PickContext::with_key(&key);
            let ia = ra.select(&ctx, &mut |_| true).unwrap();
            let ib = rb.select(&ctx, &mut |_| true).unwrap();
            assert_eq!(a[ia].id, b[ib].id);
        }
    }
}
