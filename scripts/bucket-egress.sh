#!/usr/bin/env bash
# The coordinator's egress per round with and without a bucket (`[storage]`),
# at 4, 8 and 16 workers: a real coordinator and real workers of the release
# binary on loopback, and a real S3-compatible server (s3s-fs, installed by
# scripts/install-prerequisites.sh). Egress is the coordinator's
# `crowdtrain_sent_bytes_total` over the routes workers use (every answer
# body; not /metrics, /v1/status, /v1/ledger or the dashboard, which only
# this script and people read).
#
#   scripts/bucket-egress.sh [ROUNDS] [INNER_STEPS] [WORKER_COUNTS...]
#
# e.g. scripts/bucket-egress.sh 3 10 4 8 16
# (STORAGES=bucket runs only the runs with a bucket.)
# Prints per run, per round: the coordinator's egress over HTTP (answer
# bodies), to its bucket (objects it wrote: models, deltas, round notices)
# and in all; the HTTP egress per worker; how many round views
# (`GET /v1/round` answers) each worker got; and the routes that sent most.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-4}
inner_steps=${2:-10}
shift $(($# >= 2 ? 2 : $#))
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(4 8 16)
binary=$PWD/target/release/crowdtrain
[ -x "$binary" ] || cargo build --release --quiet -p crowdtrain
data=$PWD/crates/data/assets/fashion-mnist-subset
s3s_fs=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
[ -x "$s3s_fs" ] || { echo "s3s-fs is not installed: run scripts/install-prerequisites.sh" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

s3_port=$(free_port)
mkdir -p "$work/s3/crowdtrain-bench"
"$s3s_fs" --host 127.0.0.1 --port "$s3_port" --access-key bench-access --secret-key bench-secret-key \
    "$work/s3" >/dev/null 2>"$work/s3s-fs.log" &
pids+=($!)
export AWS_ACCESS_KEY_ID=bench-access AWS_SECRET_ACCESS_KEY=bench-secret-key AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port

printf '%-8s %7s %6s %12s %12s %16s %16s %14s  %s\n' storage workers rounds http_per_round bucket_per_round egress_per_round per_worker_round round_views_wr 'largest routes (bytes per round)'
for storage in ${STORAGES:-none bucket}; do
    for workers in "${counts[@]}"; do
        run=$work/$storage-$workers
        mkdir -p "$run/state"
        storage_section=""
        [ "$storage" = bucket ] && storage_section=$'[storage]\nurl = "s3://crowdtrain-bench/'"$storage-$workers"$'"\n'
        cat >"$run/run.toml" <<EOF
rounds = $rounds
[training]
seed = 3
inner_steps = $inner_steps
batch_size = 32
[data]
dir = "$data"
[audit]
probability = 0.0
[round]
min_workers = $workers
deadline_ms = 300000
[admission]
mode = "open"
[server]
requests_per_second_per_address = 100000
requests_per_second_per_key = 100000
connections_per_second_per_address = 100000
$storage_section
EOF
        port=$(free_port)
        "$binary" coordinator --listen "127.0.0.1:$port" --config "$run/run.toml" --state "$run/state" \
            >"$run/coordinator.out" 2>"$run/coordinator.log" &
        coordinator=$!
        pids+=("$coordinator")
        until grep -q "listening on" "$run/coordinator.out" 2>/dev/null; do sleep 0.1; done
        worker_pids=()
        for index in $(seq 1 "$workers"); do
            "$binary" keygen --out "$run/worker-$index.key" >/dev/null
            "$binary" worker --coordinator "http://127.0.0.1:$port" --key "$run/worker-$index.key" \
                --data "$data" --cache "$run/cache-$index" --threads 1 --json \
                >"$run/worker-$index.json" 2>"$run/worker-$index.log" &
            worker_pids+=($!)
        done
        for pid in "${worker_pids[@]}"; do wait "$pid"; done
        curl -s "http://127.0.0.1:$port/metrics" >"$run/metrics.txt"
        kill "$coordinator"
        wait "$coordinator" 2>/dev/null || true
        python3 - "$storage" "$workers" "$rounds" "$run/metrics.txt" <<'PY'
import re, sys

storage, workers, rounds, metrics = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
observers = {"/metrics", "/v1/status", "/v1/ledger", "/v1/ledger/{index}", "/", "/dashboard.js", "/dashboard.css"}
by_route, answers, bucket = {}, {}, 0
for line in open(metrics):
    match = re.match(r'crowdtrain_(sent_bytes|answers)_total\{endpoint="([^"]*)"\} (\d+)', line)
    if match and match.group(2) not in observers:
        (by_route if match.group(1) == "sent_bytes" else answers)[match.group(2)] = int(match.group(3))
    match = re.match(r'crowdtrain_bucket_written_bytes_total (\d+)', line)
    if match:
        bucket = int(match.group(1))
http = sum(by_route.values())
egress = http + bucket
views = answers.get("/v1/round", 0) / rounds / workers
top = ", ".join(f"{route} {bytes_ / rounds:.0f}" for route, bytes_ in sorted(by_route.items(), key=lambda item: -item[1])[:3])
print(f"{storage:<8} {workers:>7} {rounds:>6} {http / rounds:>12.0f} {bucket / rounds:>12.0f} {egress / rounds:>16.0f} {http / rounds / workers:>16.0f} {views:>14.2f}  {top}")
PY
    done
done
