//! Which signed reads from one key the coordinator has taken.
//!
//! A signed read (`GET /v1/round`, an audit task, a repeated registration)
//! is single-use: a captured copy must be refused, or anyone on the path
//! could keep a departed worker looking live. Its nonce is the signer's
//! clock in microseconds. "Above the last read's" would be the simplest
//! rule, but a pipelined worker keeps several reads in flight at once (the
//! newest model's long poll, a background reveal's wait for its phase, the
//! work loop's own), a round's close answers them together, and their
//! retries arrive in any order: under that rule the one signed first was
//! refused and signed again, a race the worker could lose ten times over on
//! a loaded machine.
//!
//! So the coordinator remembers the [`READS_REMEMBERED`] latest-signed (the
//! largest) nonces it took from each key, and takes a read whose nonce is
//! none of them and, once that many are remembered, above the least of
//! them. Every nonce taken and forgotten is at most that least one (the
//! least is what is forgotten when a new one comes in), so a replay of any
//! read ever taken is refused, and reads signed close together are taken in
//! whatever order they arrive.
//! Memory is bounded: a fixed number of nonces per registered key (and
//! registered keys are bounded by `max_workers`).

/// How many of one key's most recent read nonces are remembered: more reads
/// than a worker ever has in flight at once (three), with room for their
/// retries.
pub const READS_REMEMBERED: usize = 16;

/// The latest-signed read nonces taken from one key.
#[derive(Debug, Clone, Default)]
pub struct ReadNonces {
    /// Ascending, at most [`READS_REMEMBERED`] long.
    taken: Vec<u64>,
}

/// Why a read's nonce is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// This nonce was taken already.
    Taken,
    /// It is at or below the least remembered one (given), so it may have
    /// been taken and forgotten.
    Forgotten(u64),
}

impl ReadNonces {
    /// Whether a read with `nonce` would be taken. Changes nothing.
    pub fn check(&self, nonce: u64) -> Result<(), Stale> {
        if self.taken.binary_search(&nonce).is_ok() {
            return Err(Stale::Taken);
        }
        match self.taken.first() {
            Some(&least) if self.taken.len() == READS_REMEMBERED && nonce <= least => {
                Err(Stale::Forgotten(least))
            }
            _ => Ok(()),
        }
    }

    /// Takes `nonce` (checked by [`ReadNonces::check`] first), forgetting the
    /// least remembered one if that many are.
    pub fn take(&mut self, nonce: u64) {
        debug_assert!(self.check(nonce).is_ok(), "a read's nonce is checked before it is taken");
        let at = self.taken.binary_search(&nonce).unwrap_or_else(|at| at);
        self.taken.insert(at, nonce);
        if self.taken.len() > READS_REMEMBERED {
            self.taken.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn reads_signed_close_together_are_taken_in_any_order_and_each_only_once() {
        let mut reads = ReadNonces::default();
        for nonce in [1_000, 3_000, 2_000] {
            reads.check(nonce).unwrap();
            reads.take(nonce);
        }
        for nonce in [1_000, 2_000, 3_000] {
            assert_eq!(reads.check(nonce), Err(Stale::Taken));
        }
        assert_eq!(reads.check(1_500), Ok(()), "never taken, and nothing forgotten yet");
    }

    #[test]
    fn a_read_older_than_everything_remembered_is_refused_once_the_memory_is_full() {
        let mut reads = ReadNonces::default();
        for nonce in 1..=READS_REMEMBERED as u64 {
            reads.take(nonce * 10);
        }
        // Full: 10..=160 remembered. 5 was never taken, but nothing says so.
        assert_eq!(reads.check(5), Err(Stale::Forgotten(10)));
        assert_eq!(reads.check(15), Ok(()));
        reads.take(15);
        // 10 is forgotten now, and refused all the same.
        assert_eq!(reads.check(10), Err(Stale::Forgotten(15)));
        assert_eq!(reads.check(15), Err(Stale::Taken));
    }

    /// SplitMix64: the test's own reproducible draws (this crate has no
    /// random number generator, and needs none).
    fn draw(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[test]
    fn no_nonce_is_ever_taken_twice_and_every_fresh_one_above_the_window_is_taken() {
        // Against the whole history: reads mostly increasing with jitter (as
        // a pipelined worker's arrive), replays of earlier ones mixed in.
        let mut state = 7;
        let mut reads = ReadNonces::default();
        let mut history: Vec<u64> = Vec::new();
        let mut ever: BTreeSet<u64> = BTreeSet::new();
        let mut clock = 1_000_000u64;
        for _ in 0..20_000 {
            clock += draw(&mut state) % 50;
            let nonce = if !history.is_empty() && draw(&mut state) % 10 < 3 {
                history[(draw(&mut state) % history.len() as u64) as usize]
            } else {
                clock - draw(&mut state) % 400
            };
            // The least of the largest READS_REMEMBERED taken, once that many are.
            let window = (ever.len() >= READS_REMEMBERED)
                .then(|| *ever.iter().rev().nth(READS_REMEMBERED - 1).unwrap());
            let verdict = reads.check(nonce);
            if ever.contains(&nonce) {
                assert!(verdict.is_err(), "nonce {nonce} was taken before");
            } else if window.is_none_or(|least| nonce > least) {
                assert_eq!(verdict, Ok(()), "nonce {nonce} is fresh and above {window:?}");
            } else {
                assert!(verdict.is_err(), "nonce {nonce} is below the window {window:?}");
            }
            if verdict.is_ok() {
                reads.take(nonce);
                ever.insert(nonce);
                history.push(nonce);
                assert!(reads.taken.len() <= READS_REMEMBERED);
            }
        }
        assert!(history.len() > 10_000, "most reads are fresh: {}", history.len());
    }
}
