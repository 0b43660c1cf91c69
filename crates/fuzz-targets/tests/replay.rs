//! Replays every committed input through every target under the memory
//! budget: the corpus the fuzzer built (`corpus/<target>/`) and every
//! input that ever crashed a target (`regressions/<target>/`). A crash
//! fixed once stays fixed. Also checks that each target accepts its
//! seeds, so that no target silently fuzzes only its error paths.

use std::path::{Path, PathBuf};

use crowdtrain_fuzz_targets::budget::Budgeted;
use crowdtrain_fuzz_targets::{TARGETS, Verdict, run};

#[global_allocator]
static ALLOCATOR: Budgeted = Budgeted;

fn committed_inputs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut inputs = Vec::new();
    for folder in ["corpus", "regressions"] {
        let Ok(targets) = std::fs::read_dir(root.join(folder)) else { continue };
        for target in targets {
            let target = target.expect("the corpus is readable").path();
            for input in std::fs::read_dir(&target).expect("the corpus is readable") {
                let path = input.expect("the corpus is readable").path();
                if path.is_file()
                    && !path.file_name().is_some_and(|name| name.to_string_lossy().starts_with('.'))
                {
                    inputs.push(path);
                }
            }
        }
    }
    inputs.sort();
    inputs
}

#[test]
fn every_committed_input_passes_through_every_target() {
    let inputs: Vec<(PathBuf, Vec<u8>)> = committed_inputs()
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).expect("the corpus is readable");
            (path, bytes)
        })
        .collect();
    assert!(inputs.len() >= TARGETS.len(), "the committed corpus is missing: {} inputs", inputs.len());
    // One thread per target (the budget is per thread).
    std::thread::scope(|scope| {
        for target in TARGETS {
            let inputs = &inputs;
            scope.spawn(move || {
                let mut accepted = 0usize;
                for (path, bytes) in inputs {
                    // A panic names the input; the budget aborts with a backtrace.
                    let verdict = std::panic::catch_unwind(|| run(target, bytes))
                        .unwrap_or_else(|_| panic!("target {} fails on {}", target.name, path.display()));
                    accepted += usize::from(verdict == Verdict::Accepted);
                }
                assert!(
                    accepted > 0,
                    "target {} accepted none of the {} committed inputs",
                    target.name,
                    inputs.len()
                );
            });
        }
    });
}

#[test]
fn every_target_accepts_its_seeds() {
    for target in TARGETS {
        let seeds = (target.seeds)();
        assert!(!seeds.is_empty(), "{} has no seeds", target.name);
        for (index, seed) in seeds.iter().enumerate() {
            assert_eq!(run(target, seed), Verdict::Accepted, "{} refuses its seed {index}", target.name);
        }
    }
}

#[test]
fn the_budget_catches_a_declared_length_trusted_before_the_data() {
    // The guard must be real: a child process allocating past its budget
    // is aborted, not allowed to go on.
    if std::env::var_os("CROWDTRAIN_FUZZ_BUDGET_CHILD").is_some() {
        let held = crowdtrain_fuzz_targets::budget::run_within(1 << 20, || vec![1u8; 8 << 20].len());
        println!("held {held} bytes");
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "the_budget_catches_a_declared_length_trusted_before_the_data", "--nocapture"])
        .env("CROWDTRAIN_FUZZ_BUDGET_CHILD", "1")
        .output()
        .expect("the test binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "an over-budget allocation went through");
    assert!(stderr.contains("above its budget"), "{stderr}");
}
