#!/usr/bin/env bash
# Compute utilisation of a networked run with and without one-step-delayed
# outer updates (issue 18.3): `crowdtrain demo --workers 4 --rounds 20
# --json` on loopback, plain DiLoCo (delay 0, its outer step 0.7/0.9)
# against `--outer-delay 1` (outer lr 0.3, momentum 0.5: the plain delay's
# tuned step, docs/BENCHMARKS.md), alternating in one run of this script so
# that both see the same machine. Keeps each demo's JSON report (a rerun
# skips the ones it has) and prints, per configuration and repeat, each
# worker's compute_utilisation, their mean, the median seconds per round and
# the final test accuracy, then the mean utilisation per configuration.
#
#   bench/outer-delay-network.sh
#
# Environment: WORKERS (4), ROUNDS (20), REPEATS (2), OUT
# (out/outer-delay-network), DATA (the demo's default data when unset),
# CROWDTRAIN (target/release/crowdtrain; build it first).
set -euo pipefail
cd "$(dirname "$0")/.."

workers=${WORKERS:-4}
rounds=${ROUNDS:-20}
repeats=${REPEATS:-2}
out=${OUT:-out/outer-delay-network}
data_args=()
[ -z "${DATA:-}" ] || data_args=(--data "$DATA")
configs=(
    "delay0="
    "delay1=--outer-delay 1 --outer-lr 0.3 --outer-momentum 0.5"
)
crowdtrain=${CROWDTRAIN:-target/release/crowdtrain}
[ -x "$crowdtrain" ] || { echo "no $crowdtrain: run cargo build --release first" >&2; exit 1; }
mkdir -p "$out"

reports=()
for repeat in $(seq 1 "$repeats"); do
    for config in "${configs[@]}"; do
        name=${config%%=*} flags=${config#*=}
        report="$out/$name-$repeat.json"
        if [ ! -s "$report" ]; then
            echo "== $name, repeat $repeat: demo --workers $workers --rounds $rounds $flags" >&2
            # shellcheck disable=SC2086 # flags are words
            nice -n 5 "$crowdtrain" demo --workers "$workers" --rounds "$rounds" "${data_args[@]}" \
                --json $flags > "$report.tmp"
            mv "$report.tmp" "$report"
        fi
        reports+=("$name=$report")
    done
done

python3 - "${reports[@]}" <<'PY'
import json, statistics, sys
means = {}
print(f"{'config':8} {'utilisation per worker':36} {'mean':>6} {'s/round':>8} {'test acc.':>9}")
for arg in sys.argv[1:]:
    name, path = arg.split("=", 1)
    report = json.load(open(path))
    shares = [w["compute_utilisation"] for w in report["workers"] if w.get("compute_utilisation") is not None]
    mean = statistics.mean(shares)
    means.setdefault(name, []).append(mean)
    per_worker = " ".join(f"{share:.1%}" for share in shares)
    print(f"{name:8} {per_worker:36} {mean:6.1%} {report['round_seconds_median']:8.2f} "
          f"{report['final_test_accuracy']:9.2%}")
for name, values in means.items():
    print(f"mean {name}: {statistics.mean(values):.1%} over {len(values)} runs")
PY
