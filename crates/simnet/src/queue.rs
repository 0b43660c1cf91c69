//! Virtual time: a clock and a priority queue of `(time, sequence)` →
//! event.
//!
//! Events due at the same millisecond come out in the order they were
//! scheduled (the sequence number breaks ties), so a run is a function of
//! its seed alone: no hash-map order, thread or wall clock decides anything.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// One scheduled event.
struct Scheduled<E> {
    at: u64,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<E> Eq for Scheduled<E> {}

impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Scheduled<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The virtual clock and what is due when.
pub struct Queue<E> {
    now: u64,
    seq: u64,
    heap: BinaryHeap<Reverse<Scheduled<E>>>,
}

impl<E> Queue<E> {
    /// An empty queue whose clock reads `start` (Unix milliseconds).
    pub fn new(start: u64) -> Self {
        Self { now: start, seq: 0, heap: BinaryHeap::new() }
    }

    /// The virtual time.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Schedules `event` at `at` (at the earliest now: time never runs
    /// backwards).
    pub fn at(&mut self, at: u64, event: E) {
        let at = at.max(self.now);
        self.seq += 1;
        self.heap.push(Reverse(Scheduled { at, seq: self.seq, event }));
    }

    /// Schedules `event` `delay` milliseconds from now.
    pub fn after(&mut self, delay: u64, event: E) {
        self.at(self.now + delay, event);
    }

    /// The next event, advancing the clock to its time.
    pub fn pop(&mut self) -> Option<E> {
        let Reverse(next) = self.heap.pop()?;
        self.now = next.at;
        Some(next.event)
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_by_time_then_in_scheduling_order_and_the_clock_follows() {
        let mut queue = Queue::new(100);
        queue.at(300, "c");
        queue.after(50, "a");
        queue.at(150, "b");
        queue.at(10, "past");
        assert_eq!(queue.pop(), Some("past"));
        assert_eq!(queue.now(), 100, "an event in the past is due now");
        assert_eq!(queue.pop(), Some("a"));
        assert_eq!(queue.pop(), Some("b"));
        assert_eq!(queue.now(), 150);
        assert_eq!(queue.pop(), Some("c"));
        assert_eq!(queue.now(), 300);
        assert_eq!(queue.pop(), None);
    }
}
