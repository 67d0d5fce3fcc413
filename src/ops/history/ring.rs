//! A fixed number of one-second slots, addressed by the second (unix time) they hold: writing
//! a newer second forgets the oldest, so the ring never grows.

/// The last `capacity` seconds of one value each. A second without a value (the sampler did
/// not run then, or nothing was there) reads as `None`.
///
/// ```
/// use lb_sync::ops::history::SecondRing;
/// let mut ring = SecondRing::new(3);
/// ring.put(100, 'a');
/// ring.put(102, 'c'); // 101 stays empty
/// assert_eq!((ring.get(100), ring.get(101), ring.get(102)), (Some('a'), None, Some('c')));
/// ring.put(103, 'd'); // 100 falls out of the window
/// assert_eq!(ring.get(100), None);
/// assert_eq!(ring.newest(), Some(103));
/// ```
#[derive(Clone, Debug)]
pub struct SecondRing<T: Copy> {
    /// `slots[second % capacity]`; only the seconds in `newest - capacity + 1 ..= newest` are
    /// live, every other slot is `None`.
    slots: Box<[Option<T>]>,
    newest: Option<u64>,
}

impl<T: Copy> SecondRing<T> {
    /// An empty ring of `capacity` seconds (at least 1).
    pub fn new(capacity: usize) -> SecondRing<T> {
        SecondRing { slots: vec![None; capacity.max(1)].into_boxed_slice(), newest: None }
    }

    /// Seconds it holds at most.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The newest second written, if any.
    pub fn newest(&self) -> Option<u64> {
        self.newest
    }

    fn index(&self, second: u64) -> usize {
        (second % self.slots.len() as u64) as usize
    }

    /// Whether `second` is inside the window that ends at the newest second.
    fn in_window(&self, second: u64) -> bool {
        self.newest.is_some_and(|newest| second <= newest && newest - second < self.slots.len() as u64)
    }

    /// Sets `second`'s value. A second newer than the newest moves the window there (the
    /// seconds skipped on the way are empty); one older than the window is dropped.
    pub fn put(&mut self, second: u64, value: T) {
        self.advance(second);
        if self.in_window(second) {
            let i = self.index(second);
            self.slots[i] = Some(value);
        }
    }

    /// Moves the window to end at `second` when that is newer, its new seconds empty.
    fn advance(&mut self, second: u64) {
        match self.newest {
            Some(newest) if second <= newest => {}
            Some(newest) => {
                // The new seconds' slots still hold values from a turn ago (at most a turn).
                let new_seconds = (second - newest).min(self.slots.len() as u64);
                for s in second + 1 - new_seconds..=second {
                    let i = self.index(s);
                    self.slots[i] = None;
                }
                self.newest = Some(second);
            }
            None => self.newest = Some(second),
        }
    }

    /// The value of `second`, when it is in the window and has one.
    pub fn get(&self, second: u64) -> Option<T> {
        if self.in_window(second) {
            self.slots[self.index(second)]
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_around_keeping_exactly_the_last_capacity_seconds() {
        let mut ring = SecondRing::new(900);
        for second in 1_000..1_000 + 2_500 {
            ring.put(second, second * 2);
        }
        let newest = 1_000 + 2_499;
        assert_eq!(ring.newest(), Some(newest));
        for second in newest - 899..=newest {
            assert_eq!(ring.get(second), Some(second * 2), "second {second}");
        }
        assert_eq!(ring.get(newest - 900), None, "just out of the window");
        assert_eq!(ring.get(newest + 1), None, "not written yet");
        assert_eq!(ring.capacity(), 900, "bounded: the slots never grow");
    }

    #[test]
    fn skipped_seconds_read_empty_even_where_an_old_value_was() {
        let mut ring = SecondRing::new(10);
        for second in 0..10 {
            ring.put(second, 1u32);
        }
        ring.put(14, 2);
        assert_eq!((10..14).map(|s| ring.get(s)).collect::<Vec<_>>(), vec![None; 4]);
        assert_eq!(ring.get(14), Some(2));
        assert_eq!((5..10).map(|s| ring.get(s)).collect::<Vec<_>>(), vec![Some(1); 5]);
        // A jump of more than a turn empties everything but the new second.
        ring.put(100, 3);
        assert_eq!((91..100).filter_map(|s| ring.get(s)).count(), 0);
        assert_eq!(ring.get(100), Some(3));
    }

    #[test]
    fn older_seconds_than_the_window_are_dropped_and_inner_ones_overwritten() {
        let mut ring = SecondRing::new(5);
        ring.put(50, 'x');
        ring.put(44, 'o');
        assert_eq!(ring.get(44), None);
        ring.put(47, 'y');
        assert_eq!(ring.get(47), Some('y'));
        ring.put(47, 'z');
        assert_eq!((ring.get(47), ring.newest()), (Some('z'), Some(50)));
    }
}
