#!/usr/bin/env bash
# Honest work done on one CPU passes bit-exact replay audits on another.
#
# Runs a coordinator natively with every submission audited, and three
# honest workers: one native, one under `qemu-x86_64 -cpu max` (AVX2+FMA,
# no AVX-512) and one under `qemu-x86_64 -cpu Nehalem` (SSE4.2 only: no AVX,
# no FMA, so the portable kernels with software FMA). The coordinator
# replays each worker's audited segment on this machine and compares state
# hashes bit for bit. Prints every verdict from the ledger and exits
# non-zero unless all passed.
#
#   scripts/audit-across-cpus.sh [ROUNDS]     (default 3)
#
# Needs the Debian package qemu-user (apt-get install qemu-user).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
command -v qemu-x86_64 >/dev/null || { echo "qemu-x86_64 not found: apt-get install qemu-user" >&2; exit 2; }
cargo build --release --quiet -p crowdtrain
binary=$PWD/target/release/crowdtrain
data=$PWD/crates/data/assets/fashion-mnist-subset
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT

cat > "$dir/run.toml" <<TOML
rounds = $rounds
[training]
seed = 11
inner_steps = 8
batch_size = 32
[data]
dir = "$data"
[round]
min_workers = 3
deadline_ms = 600000
reveal_ms = 600000
[audit]
probability = 1.0
segments = 4
stake = 256
TOML

"$binary" coordinator --config "$dir/run.toml" --state "$dir/state" --listen 127.0.0.1:0 \
    > "$dir/coordinator.out" 2> "$dir/coordinator.log" &
for _ in $(seq 100); do grep -q listening "$dir/coordinator.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$dir/coordinator.out")
[ -n "$url" ] || { cat "$dir/coordinator.log" >&2; exit 1; }

workers=()
for cpu in native max Nehalem; do
    "$binary" keygen --out "$dir/$cpu.key" > /dev/null
    runner=()
    [ "$cpu" = native ] || runner=(qemu-x86_64 -cpu "$cpu")
    "${runner[@]}" "$binary" worker --coordinator "$url" --key "$dir/$cpu.key" --data "$data" \
        --cache "$dir/cache-$cpu" --threads 1 --json > "$dir/$cpu.json" 2> "$dir/$cpu.log" &
    workers+=($!)
done
for pid in "${workers[@]}"; do wait "$pid"; done

status=0
printf '%-8s %-6s %-8s %s\n' cpu round segment verdict
for cpu in native max Nehalem; do
    worker=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["worker"])' "$dir/$cpu.json")
    "$binary" ledger show --state "$dir/state" --kind audit --json | python3 -c '
import json, sys
cpu, worker = sys.argv[1], int(sys.argv[2])
ok = True
for entry in json.load(sys.stdin)["entries"]:
    audit = entry["event"]["audit"]
    if audit["worker"] == worker:
        print("%-8s %-6s %-8s %s" % (cpu, audit["round"], audit["segment"], audit["verdict"]))
        ok &= audit["verdict"] == "passed"
sys.exit(0 if ok else 1)' "$cpu" "$worker" || status=1
done
"$binary" ledger verify --state "$dir/state"
exit $status
