use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::Vt;

struct Entry<E> {
    at: Vt,
    seq: u64,
    ev: E,
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl<E> Eq for Entry<E> {}
impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<E> Ord for Entry<E> {
    fn cmp(&self, o: &Self) -> Ordering {
        // Min-heap on (time, sequence): equal times pop in insertion order.
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// The simulation's event queue and virtual clock: events pop in (time, insertion) order,
/// and popping one advances the clock to its time.
pub struct Queue<E> {
    heap: BinaryHeap<Entry<E>>,
    seq: u64,
    now: Vt,
}

impl<E> std::fmt::Debug for Queue<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("now", &self.now)
            .field("pending", &self.heap.len())
            .finish()
    }
}

impl<E> Default for Queue<E> {
    fn default() -> Self {
        Queue {
            heap: BinaryHeap::new(),
            seq: 0,
            now: 0,
        }
    }
}

impl<E> Queue<E> {
    /// An empty queue at virtual time 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current virtual time.
    pub fn now(&self) -> Vt {
        self.now
    }

    /// Schedule `ev` at `at` (never before now).
    pub fn at(&mut self, at: Vt, ev: E) {
        self.seq += 1;
        self.heap.push(Entry {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    /// Schedule `ev` `delay` µs from now.
    pub fn after(&mut self, delay: Vt, ev: E) {
        self.at(self.now + delay, ev);
    }

    /// The next event if it is due by `until`, advancing the clock to it.
    pub fn pop_until(&mut self, until: Vt) -> Option<E> {
        if self.heap.peek().is_some_and(|e| e.at <= until) {
            let e = self.heap.pop()?;
            self.now = e.at;
            Some(e.ev)
        } else {
            self.now = self.now.max(until);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Queue;

    #[test]
    fn pops_in_time_then_insertion_order_and_advances_the_clock() {
        let mut q = Queue::new();
        q.at(20, "c");
        q.at(10, "a");
        q.at(10, "b");
        assert_eq!(q.pop_until(100), Some("a"));
        assert_eq!(q.now(), 10);
        assert_eq!(q.pop_until(100), Some("b"));
        assert_eq!(q.pop_until(15), None);
        assert_eq!(q.now(), 15);
        assert_eq!(q.pop_until(100), Some("c"));
    }
}
