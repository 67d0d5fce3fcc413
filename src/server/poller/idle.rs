//! Idle connections in the order they became idle, so that at the connection cap the one idle
//! longest makes room for a new client (nginx's reusable-connections queue).

use std::time::Instant;

use crate::server::TokenMap;

/// A set of connection tokens ordered by when each was last marked, oldest first: a doubly
/// linked list threaded through a map, so marking, removing and taking the oldest are O(1) and
/// it never holds more entries than there are connections.
///
/// Entries are hints: a connection that stopped being idle stays listed until it is taken
/// (and skipped) or closed, so the poller needs no bookkeeping on every state change.
#[derive(Default)]
pub(super) struct IdleOrder {
    links: TokenMap<Link>,
    oldest: Option<usize>,
    newest: Option<usize>,
}

#[derive(Clone, Copy)]
struct Link {
    older: Option<usize>,
    newer: Option<usize>,
    /// When it was marked.
    since: Instant,
}

impl IdleOrder {
    /// Marks `token` as the newest, idle since `now` (listing it, or moving it to the end).
    /// The list keeps the order of the marks; their times may run back by the moments between
    /// a worker's return and the poller's look at it, which is all the precision the times
    /// need (pollers compare them at the connection cap).
    pub fn mark(&mut self, token: usize, now: Instant) {
        self.remove(token);
        self.links.insert(token, Link { older: self.newest, newer: None, since: now });
        match self.newest {
            Some(newest) => self.set_newer(newest, Some(token)),
            None => self.oldest = Some(token),
        }
        self.newest = Some(token);
    }

    /// Forgets `token` (closed, or gone to a tunnel); nothing when it is not listed.
    pub fn remove(&mut self, token: usize) {
        let Some(link) = self.links.remove(&token) else { return };
        match link.older {
            Some(older) => self.set_newer(older, link.newer),
            None => self.oldest = link.newer,
        }
        match link.newer {
            Some(newer) => self.set_older(newer, link.older),
            None => self.newest = link.older,
        }
    }

    /// Takes the oldest token off the list.
    pub fn pop_oldest(&mut self) -> Option<usize> {
        let oldest = self.oldest?;
        self.remove(oldest);
        Some(oldest)
    }

    /// The oldest listed token and when it was marked.
    pub fn oldest(&self) -> Option<(usize, Instant)> {
        self.oldest.and_then(|token| self.links.get(&token).map(|link| (token, link.since)))
    }

    /// How many tokens are listed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.links.len()
    }

    fn set_newer(&mut self, token: usize, newer: Option<usize>) {
        if let Some(link) = self.links.get_mut(&token) {
            link.newer = newer;
        }
    }

    fn set_older(&mut self, token: usize, older: Option<usize>) {
        if let Some(link) = self.links.get_mut(&token) {
            link.older = older;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IdleOrder;
    use std::time::Instant;

    fn drain(order: &mut IdleOrder) -> Vec<usize> {
        std::iter::from_fn(|| order.pop_oldest()).collect()
    }

    #[test]
    fn oldest_first_and_a_mark_moves_a_token_to_the_end() {
        let mut order = IdleOrder::default();
        for token in [3, 4, 5, 6] {
            order.mark(token, Instant::now());
        }
        order.mark(4, Instant::now());
        order.mark(6, Instant::now());
        assert_eq!(drain(&mut order), [3, 5, 4, 6]);
        assert_eq!(order.len(), 0);
        assert_eq!(order.pop_oldest(), None);
    }

    #[test]
    fn removing_the_first_the_last_a_middle_one_or_an_unknown_one_keeps_the_order() {
        let mut order = IdleOrder::default();
        for token in 10..16 {
            order.mark(token, Instant::now());
        }
        order.remove(10);
        order.remove(15);
        order.remove(12);
        order.remove(99);
        assert_eq!(drain(&mut order), [11, 13, 14]);
        order.mark(7, Instant::now());
        order.remove(7);
        assert_eq!(order.pop_oldest(), None);
        order.mark(8, Instant::now());
        assert_eq!(drain(&mut order), [8]);
    }

    #[test]
    fn marking_again_and_again_never_grows_it() {
        let mut order = IdleOrder::default();
        for round in 0..1000 {
            order.mark(round % 7, Instant::now());
        }
        assert_eq!(order.len(), 7);
        // The last seven marks were rounds 993 to 999: tokens 6, then 0 to 5.
        assert_eq!(drain(&mut order), [6, 0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn the_oldest_marks_token_and_time_are_known() {
        let mut order = IdleOrder::default();
        assert_eq!(order.oldest(), None);
        let first = Instant::now();
        order.mark(1, first);
        order.mark(2, first + std::time::Duration::from_secs(1));
        assert_eq!(order.oldest(), Some((1, first)));
        order.remove(1);
        assert_eq!(order.oldest(), Some((2, first + std::time::Duration::from_secs(1))));
    }
}
