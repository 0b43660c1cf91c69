#!/usr/bin/env bash
# Runs `crowdtrain demo` and summarises the coordinator's per-round overhead
# (from a round's last worker input to the next round being open) against
# the round's length: the median the demo reports, the 90th percentile of
# the per-round share, and the medians over audited and unaudited rounds.
#
#   scripts/coordinator-overhead.sh H [ROUNDS] [demo options...]
#
# e.g. scripts/coordinator-overhead.sh 50 20
#      scripts/coordinator-overhead.sh 50 20 --auditors workers
#      scripts/coordinator-overhead.sh 50 20 --data crates/data/assets/fashion-mnist-subset
set -euo pipefail
cd "$(dirname "$0")/.."
inner_steps=${1:?usage: scripts/coordinator-overhead.sh H [ROUNDS] [demo options...]}
rounds=${2:-20}
shift $(($# >= 2 ? 2 : 1))
binary=target/release/crowdtrain
[ -x "$binary" ] || cargo build --release --quiet
report=$("$binary" demo --workers 4 --rounds "$rounds" --inner-steps "$inner_steps" --json "$@" 2>/dev/null)
python3 - "$inner_steps" "$report" <<'PY'
import json, statistics, sys

inner_steps, report = sys.argv[1], json.loads(sys.argv[2])
closed = [r for r in report["rounds"] if r["status"] == "closed"]
shares = sorted(
    r["coordinator_overhead_ms"] / max(1, r["closed_unix_ms"] - r["opened_unix_ms"]) for r in closed
)
def median(values):
    return f"{statistics.median(values):g} ms" if values else "-"
audited = [r["coordinator_overhead_ms"] for r in closed if r["audited"]]
unaudited = [r["coordinator_overhead_ms"] for r in closed if not r["audited"]]
print(
    f"H={inner_steps} rounds={len(closed)} wall={report['seconds']:.1f}s "
    f"accuracy={report['final_test_accuracy']} state={report['state_hash'][:8]} "
    f"round={report['round_seconds_median'] * 1e3:.0f}ms "
    f"overhead={report['coordinator_overhead_ms_median']}ms "
    f"share={report['coordinator_overhead_fraction_median'] * 100:.1f}% "
    f"p90_share={shares[int(0.9 * (len(shares) - 1))] * 100:.1f}% "
    f"audited_rounds={len(audited)} audited={median(audited)} unaudited={median(unaudited)}"
)
PY
