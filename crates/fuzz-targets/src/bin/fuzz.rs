//! The libFuzzer harness: one binary for every target, chosen by the
//! `CROWDTRAIN_FUZZ_TARGET` environment variable (one build instead of
//! one per target). Built by `scripts/fuzz.sh` with coverage
//! instrumentation on stable Rust; see that script for the flags.

#![no_main]

use std::sync::OnceLock;

use crowdtrain_fuzz_targets::budget::Budgeted;
use crowdtrain_fuzz_targets::{TARGETS, Target, run, target};

#[global_allocator]
static ALLOCATOR: Budgeted = Budgeted;

fn chosen() -> &'static Target {
    static CHOSEN: OnceLock<&'static Target> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        let name = std::env::var("CROWDTRAIN_FUZZ_TARGET").unwrap_or_default();
        target(&name).unwrap_or_else(|| {
            let names: Vec<&str> = TARGETS.iter().map(|target| target.name).collect();
            eprintln!("set CROWDTRAIN_FUZZ_TARGET to one of: {}", names.join(", "));
            std::process::exit(2)
        })
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    run(chosen(), data);
});
