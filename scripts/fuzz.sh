#!/usr/bin/env bash
# Fuzzes crowdtrain's decoders of untrusted bytes with libFuzzer, on stable Rust.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#   nice -n 10 scripts/fuzz.sh 600                       what docs/BENCHMARKS.md reports
#
# Builds the `crowdtrain-fuzz` binary (crate crowdtrain-fuzz-targets, feature
# `libfuzzer`) into target/<host triple> with LLVM's sanitizer-coverage instrumentation,
# which rustc exposes on stable through -Cpasses and -Cllvm-args (no nightly,
# no cargo-fuzz; libfuzzer-sys compiles libFuzzer itself with the C++
# compiler). Only the fuzzed code is instrumented: --target keeps the flags
# off build scripts and proc macros. Overflow checks and debug assertions
# are on, so an arithmetic overflow in a decoder is a crash too.
#
# Then, one target at a time: fuzzes from the committed corpus and the
# seeds for SECONDS, merges what it found into a minimal corpus
# (crates/fuzz-targets/corpus/TARGET, committed; FUZZ_UPDATE_CORPUS=0 to
# leave it alone), and copies every crashing input into
# crates/fuzz-targets/regressions/TARGET, where `cargo test -p
# crowdtrain-fuzz-targets` replays it until it is fixed. Prints per target:
# executions, executions per second, coverage (edges and features),
# corpus size and crashes; the same table goes to target/fuzz/summary.tsv
# (this run) and target/fuzz/history.tsv (every run).
#
# Environment: FUZZ_MAX_LEN (largest input, default 16384), FUZZ_RSS_MB
# (default 2560), FUZZ_TIMEOUT (seconds per input before it is a hang, 10).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
crate=crates/fuzz-targets
out=target/fuzz
triple=$(rustc -vV | sed -n 's/^host: //p')
if ! command -v c++ >/dev/null; then
    echo "libfuzzer-sys compiles libFuzzer with a C++ compiler: apt-get install g++" >&2
    exit 1
fi

instrumentation=(
    -Cpasses=sancov-module
    -Cllvm-args=-sanitizer-coverage-level=4
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
    -Cllvm-args=-sanitizer-coverage-pc-table
    -Cllvm-args=-sanitizer-coverage-trace-compares
    -Cdebug-assertions
    -Coverflow-checks
    -Cforce-frame-pointers=yes
)
echo "building the fuzzer (instrumented, $triple) ..." >&2
# The instrumented code lands in target/$triple; build scripts and proc
# macros (host code, not instrumented) are shared with the normal build.
RUSTFLAGS="${instrumentation[*]}" \
    cargo build --release --target "$triple" -p crowdtrain-fuzz-targets --features libfuzzer --bin crowdtrain-fuzz
fuzzer=target/$triple/release/crowdtrain-fuzz

# Seeds come from the real encoders, built without instrumentation.
cargo build --release -p crowdtrain-fuzz-targets --bin crowdtrain-fuzz-seeds
rm -rf "$out/seeds"
target/release/crowdtrain-fuzz-seeds "$out/seeds"

if [ $# -eq 0 ]; then
    set -- $(ls "$out/seeds")
fi

# This run's table, and every run's in target/fuzz/history.tsv.
summary=$out/summary.tsv
header='target\tseconds\texecutions\texec_per_s\tedges\tfeatures\tcorpus_files\tcorpus_bytes\tcrashes\tfinished'
printf "$header\n" >"$summary"
[ -f "$out/history.tsv" ] || printf "$header\n" >"$out/history.tsv"
for name in "$@"; do
    if [ ! -d "$out/seeds/$name" ]; then
        echo "unknown target $name; targets: $(ls "$out/seeds" | tr '\n' ' ')" >&2
        exit 2
    fi
    work=$out/work/$name
    rm -rf "$work"
    mkdir -p "$work/found" "$work/crashes" "$crate/corpus/$name"
    echo "fuzzing $name for $seconds s ..." >&2
    set +e
    CROWDTRAIN_FUZZ_TARGET=$name "$fuzzer" "$work/found" "$crate/corpus/$name" "$out/seeds/$name" \
        -max_total_time="$seconds" -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb="${FUZZ_RSS_MB:-2560}" \
        -max_len="${FUZZ_MAX_LEN:-16384}" -artifact_prefix="$work/crashes/" -print_final_stats=1 \
        >"$work/log" 2>&1
    status=$?
    set -e
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$work/log" | tail -1 || true)
    edges=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    features=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    crashes=$(find "$work/crashes" -type f | wc -l)
    if [ "$crashes" -gt 0 ]; then
        mkdir -p "$crate/regressions/$name"
        cp "$work/crashes"/* "$crate/regressions/$name/"
        echo "$name: $crashes crashing input(s), copied to $crate/regressions/$name (libFuzzer exit $status):" >&2
        grep -E 'panicked at|above its budget|ERROR: libFuzzer|SUMMARY' "$work/log" | head -5 >&2 || true
    elif [ "$status" -ne 0 ]; then
        echo "$name: libFuzzer exited with $status without a crashing input; see $work/log" >&2
        tail -20 "$work/log" >&2
        exit 1
    fi
    if [ "${FUZZ_UPDATE_CORPUS:-1}" = 1 ]; then
        # Keep a smallest set of inputs with the same coverage (a greedy
        # set cover): the committed corpus stays small.
        mkdir -p "$work/merged"
        CROWDTRAIN_FUZZ_TARGET=$name "$fuzzer" -set_cover_merge=1 "$work/merged" "$crate/corpus/$name" "$work/found" \
            "$out/seeds/$name" -max_len="${FUZZ_MAX_LEN:-16384}" -timeout="${FUZZ_TIMEOUT:-10}" \
            >"$work/merge.log" 2>&1
        rm -rf "${crate:?}/corpus/$name"
        mv "$work/merged" "$crate/corpus/$name"
    fi
    files=$(find "$crate/corpus/$name" -type f | wc -l)
    bytes=$(du -sb "$crate/corpus/$name" | cut -f1)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$seconds" "${executions:-0}" "${rate:-0}" \
        "${edges:-?}" "${features:-?}" "$files" "$bytes" "$crashes" "$(date -u +%FT%TZ)" | tee -a "$out/history.tsv" >>"$summary"
done
column -t -s $'\t' "$summary"
