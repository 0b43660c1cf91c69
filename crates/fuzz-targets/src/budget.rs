//! A memory budget for decoders: the allocator that finds a declared
//! length turned into an allocation.
//!
//! A decoder that trusts a length field (`Vec::with_capacity(declared)`,
//! `vec![0; count]`) crashes nothing on small inputs: it only reserves
//! memory. So the harness and the corpus replay install [`Budgeted`] as
//! the global allocator, and [`run_within`] arms a per-thread limit on the
//! bytes live at once while one input is decoded: a constant floor plus a
//! multiple of the input's size. An input that makes a decoder hold more
//! aborts the process with the size and a backtrace, which libFuzzer
//! records as a crash and `cargo test` as a failure.
//!
//! The accounting is per thread (the decoders run on the calling thread)
//! and costs two thread-local additions per allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;

/// The system allocator, counting the bytes each thread holds.
pub struct Budgeted;

thread_local! {
    /// Bytes this thread allocated minus bytes it freed (wrapping: memory
    /// allocated before arming may be freed while armed).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// `LIVE` when the budget was armed, and the budget; `None` disarmed.
    static ARMED: Cell<Option<(isize, isize)>> = const { Cell::new(None) };
}

fn charge(bytes: usize) {
    let Ok(live) = LIVE.try_with(|live| {
        let now = live.get().wrapping_add(bytes as isize);
        live.set(now);
        now
    }) else {
        return;
    };
    let Ok(Some((base, budget))) = ARMED.try_with(Cell::get) else { return };
    if live.wrapping_sub(base) > budget {
        ARMED.set(None);
        over_budget(live.wrapping_sub(base), budget);
    }
}

fn refund(bytes: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().wrapping_sub(bytes as isize)));
}

#[cold]
fn over_budget(live: isize, budget: isize) -> ! {
    // Disarmed above, so the backtrace may allocate.
    let backtrace = std::backtrace::Backtrace::force_capture();
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(
        stderr,
        "\ncrowdtrain-fuzz-targets: the decoder holds {live} bytes, above its budget of {budget} \
         for this input (a declared length trusted before the data backs it?)\n{backtrace}"
    );
    std::process::abort()
}

// SAFETY: every method forwards to `System` with the same arguments; the
// bookkeeping touches only thread-local counters and never the pointers.
unsafe impl GlobalAlloc for Budgeted {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        charge(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        charge(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        refund(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= layout.size() {
            charge(new_size - layout.size());
        } else {
            refund(layout.size() - new_size);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `work` with at most `budget` more bytes live on this thread than
/// when it started. Enforced only where [`Budgeted`] is the global
/// allocator; elsewhere it just runs `work`.
pub fn run_within<T>(budget: usize, work: impl FnOnce() -> T) -> T {
    struct Disarm;
    impl Drop for Disarm {
        fn drop(&mut self) {
            ARMED.set(None);
        }
    }
    let base = LIVE.with(Cell::get);
    ARMED.set(Some((base, isize::try_from(budget).unwrap_or(isize::MAX))));
    let _disarm = Disarm;
    work()
}
