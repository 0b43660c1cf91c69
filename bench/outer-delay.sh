#!/usr/bin/env bash
# Final test accuracy of DiLoCo with one-step-delayed outer updates against
# plain DiLoCo (issue 18.3), on full Fashion-MNIST: 8 workers, H = 50, 30
# rounds, int8 updates, each configuration on each seed, one JSON report
# per run (kept: a rerun skips the runs it has), then the table of
# `sim codecs` and the mean per configuration.
#
#   bench/outer-delay.sh [NAME=FLAGS ...]
#
# Each argument names a configuration and the `sim diloco` flags it adds,
# e.g. 'delay1-lr0.5=--outer-delay 1 --outer-lr 0.5'. Default: the rows of
# docs/BENCHMARKS.md (plain DiLoCo; the delay alone and with each eager
# stand-in at DiLoCo's outer step; the two tuned outer steps; delays 3 and
# 4 at their tuned steps, plain and with the worker's own update).
# Environment: SEEDS ("0 1 2"), OUT (out/outer-delay), DATA
# (/usr/share/datasets/fashion-mnist), THREADS (2).
set -euo pipefail
cd "$(dirname "$0")/.."

seeds=${SEEDS:-0 1 2}
out=${OUT:-out/outer-delay}
data=${DATA:-/usr/share/datasets/fashion-mnist}
threads=${THREADS:-2}
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(
    "delay0="
    "delay1=--outer-delay 1"
    "delay1-trend=--outer-delay 1 --eager trend"
    "delay1-own=--outer-delay 1 --eager own"
    "delay1-lr0.3-m0.5=--outer-delay 1 --outer-lr 0.3 --outer-momentum 0.5"
    "delay1-own-lr0.5-m0.5=--outer-delay 1 --eager own --outer-lr 0.5 --outer-momentum 0.5"
    "delay3-lr0.15-m0.5=--outer-delay 3 --outer-lr 0.15 --outer-momentum 0.5"
    "delay3-own-lr0.2-m0.5=--outer-delay 3 --eager own --outer-lr 0.2 --outer-momentum 0.5"
    "delay4-lr0.1-m0.5=--outer-delay 4 --outer-lr 0.1 --outer-momentum 0.5"
    "delay4-own-lr0.15-m0.5=--outer-delay 4 --eager own --outer-lr 0.15 --outer-momentum 0.5"
)
cargo build --release --quiet -p crowdtrain
crowdtrain=target/release/crowdtrain
mkdir -p "$out"

reports=()
for config in "${configs[@]}"; do
    name=${config%%=*} flags=${config#*=}
    for seed in $seeds; do
        report="$out/$name-$seed.json"
        reports+=("$report")
        [ -s "$report" ] && continue
        echo "$name, seed $seed: $crowdtrain sim diloco ... $flags" >&2
        # shellcheck disable=SC2086 # the flags are words
        nice -n 5 "$crowdtrain" sim diloco --workers 8 --inner-steps 50 --rounds 30 --seed "$seed" \
            --data "$data" --threads "$threads" --json $flags > "$report.tmp"
        mv "$report.tmp" "$report"
    done
done
"$crowdtrain" sim codecs "${reports[@]}"
python3 - "${reports[@]}" <<'PY'
import collections, json, os, sys
runs = collections.defaultdict(list)
for path in sys.argv[1:]:
    name = os.path.basename(path).rsplit("-", 1)[0]
    runs[name].append(json.load(open(path))["final_test_accuracy"] * 100)
print(f"{'configuration':<28} {'seeds':>5} {'mean test acc.':>15}  per seed")
for name, accuracies in runs.items():
    mean = sum(accuracies) / len(accuracies)
    print(f"{name:<28} {len(accuracies):>5} {mean:>14.2f}%  {', '.join(f'{a:.2f}' for a in accuracies)}")
PY
