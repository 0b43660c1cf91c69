//! The coordinator's notion of time, passed in rather than read: the state
//! machine takes the time with every input, and the node takes it from a
//! [`Clock`], so the same code runs on the wall clock in a process and on
//! virtual time in the in-process tests (deadlines reached by moving the
//! clock, not by sleeping).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, the machine's notion of time.
pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Milliseconds since the Unix epoch, as the node sees them.
pub trait Clock: Send + Sync {
    fn now_unix_ms(&self) -> u64;
}

/// The wall clock: what a coordinator process runs on.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> u64 {
        now_unix_ms()
    }
}

/// Virtual time that moves only when told to: for driving a node in
/// process through deadlines without waiting for them.
#[derive(Debug)]
pub struct VirtualClock(AtomicU64);

impl VirtualClock {
    pub fn new(start_unix_ms: u64) -> Self {
        Self(AtomicU64::new(start_unix_ms))
    }

    /// Moves the clock on by `milliseconds`; returns the new time.
    pub fn advance(&self, milliseconds: u64) -> u64 {
        self.0.fetch_add(milliseconds, Ordering::SeqCst) + milliseconds
    }
}

impl Clock for VirtualClock {
    fn now_unix_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_time_stands_still_until_advanced() {
        let clock = VirtualClock::new(1_000);
        assert_eq!(clock.now_unix_ms(), 1_000);
        assert_eq!(clock.now_unix_ms(), 1_000, "no time passes by itself");
        assert_eq!(clock.advance(250), 1_250);
        assert_eq!(clock.now_unix_ms(), 1_250);
    }
}
