#!/usr/bin/env bash
# A real run over a WAN built on this machine: a coordinator and N workers,
# each in its own network namespace behind a capped link and a fixed delay,
# and a table of what it cost: compute utilisation per worker (time training
# / time since joining), bytes per round, seconds per round, accuracy.
#
#   sudo scripts/wan-bench.sh [--workers "4 8"] [--rates "100mbit 20mbit"]
#        [--delay-ms 50] [--rounds 10] [--inner-steps 50]
#        [--config "FILE ..."] [--repeats 1] [--coordinator-rate 1gbit]
#        [--json FILE] [--prefix ctw] [--keep] [--worker-args "ARGS"]
#        [--worker-nice N]
#
# The lab is ../shared/scripts/wan-lab (or $WAN_LAB_DIR): host 0 runs the
# coordinator on a link of --coordinator-rate (a data centre's), hosts
# 1..N one worker each on a link of the rate under test, both directions
# capped by tbf. The delay is delay-proxy.py in each worker's namespace: the
# worker talks to 127.0.0.1, the proxy holds every chunk --delay-ms each
# way, so a round trip gains twice that. Needs root (namespaces), python3,
# and a release build (cargo build --release). Every lab, proxy and process
# it starts is torn down on exit, also on failure or Ctrl-C.
#
# The run: --config (default examples/run.toml's defaults: the MLP on
# Fashion-MNIST, int8 updates) with `rounds`, `training.inner_steps` and
# `round.min_workers` (the workers started) overridden, admission open (the
# lab is private) and audits as configured. Several configs (e.g. delay 0
# and delay 1) are run alternately, --repeats times, for each number of
# workers and rate, so that each sees the same machine; the table names
# each row's config and where the workers' non-training time went (their
# `idle` seconds a round: waiting for the round, the model, commitments,
# uploads, auditing others). --keep keeps every run's directory (the
# coordinator's state with its ledger, the workers' logs and summaries; not
# their model caches) and prints where it is. --worker-args passes more arguments to every worker
# (the GPT's configs need `--tokenizer char`). --worker-nice N runs the
# workers at that niceness (default 0): on one machine the lab's network
# (each worker's delay proxy, a Python process) and the coordinator's data
# centre share the workers' cores, and workers that keep both cores busy
# slow the network they wait on, which separate machines would not; at 10
# the proxies and the coordinator go first.
# One caveat: the workers share this machine's cores, so each trains
# slower than it would alone; utilisation is still the share of its wall
# time a worker trained, the figure overlap and compression are for.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
lab_dir="${WAN_LAB_DIR:-$root/../shared/scripts}"
binary="${CROWDTRAIN:-$root/target/release/crowdtrain}"
workers_list="4 8"
rates="100mbit 20mbit"
delay_ms=50
rounds=10
inner_steps=50
configs=""
repeats=1
coordinator_rate="1gbit"
json_out=""
prefix="ctw"
keep=""
worker_args=""
worker_nice=0

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --workers) workers_list="$2"; shift 2 ;;
        --rates) rates="$2"; shift 2 ;;
        --delay-ms) delay_ms="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --worker-nice) worker_nice="$2"; shift 2 ;;
        --inner-steps) inner_steps="$2"; shift 2 ;;
        --config) configs="$2"; shift 2 ;;
        --repeats) repeats="$2"; shift 2 ;;
        --coordinator-rate) coordinator_rate="$2"; shift 2 ;;
        --json) json_out="$2"; shift 2 ;;
        --prefix) prefix="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        --worker-args) worker_args="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "wan-bench needs root (network namespaces)" >&2; exit 1; }
[ -x "$binary" ] || { echo "no $binary: run cargo build --release first" >&2; exit 1; }
[ -x "$lab_dir/wan-lab" ] || { echo "no wan-lab in $lab_dir (set WAN_LAB_DIR)" >&2; exit 1; }
wan_lab="$lab_dir/wan-lab"
proxy="$lab_dir/delay-proxy.py"

work="$(mktemp -d /tmp/wan-bench.XXXXXX)"
pids=()
teardown() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
    "$wan_lab" down --prefix "$prefix" >/dev/null 2>&1 || true
}
trap 'teardown; if [ -n "$keep" ]; then echo "runs kept in $work" >&2; else rm -rf "$work"; fi' EXIT
trap 'exit 130' INT TERM

# The run's configuration: the user's, or the defaults, with this bench's
# rounds, inner steps and open admission.
write_config() {
    local out="$1" config="$3"
    if [ "$config" != "default" ]; then
        python3 - "$config" "$rounds" "$inner_steps" "$2" >"$out" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
text = re.sub(r"(?m)^rounds\s*=.*$", f"rounds = {sys.argv[2]}", text, count=1)
text = re.sub(r"(?m)^inner_steps\s*=.*$", f"inner_steps = {sys.argv[3]}", text, count=1)
if re.search(r"(?m)^min_workers\s*=", text):
    text = re.sub(r"(?m)^min_workers\s*=.*$", f"min_workers = {sys.argv[4]}", text, count=1)
elif re.search(r"(?m)^\[round\]", text):
    text = re.sub(r"(?m)^\[round\].*$", f"[round]\nmin_workers = {sys.argv[4]}", text, count=1)
else:
    text += f"\n[round]\nmin_workers = {sys.argv[4]}\n"
text = re.sub(r"(?ms)^\[admission\].*?(?=^\[|\Z)", "", text)
print(text)
print('[admission]\nmode = "open"')
EOF
    else
        printf 'rounds = %s\n[training]\nseed = 0\ninner_steps = %s\n[round]\nmin_workers = %s\n[admission]\nmode = "open"\n' \
            "$rounds" "$inner_steps" "$2" >"$out"
    fi
}

results="$work/results.jsonl"
: >"$results"
for workers in $workers_list; do
    for rate in $rates; do
      for repeat in $(seq 1 "$repeats"); do
       for config in ${configs:-default}; do
        run="$work/run-$workers-$rate-$repeat-$(basename "$config" .toml)"
        mkdir -p "$run"
        write_config "$run/run.toml" "$workers" "$config"
        echo "== $workers workers at $rate, ${delay_ms} ms one way, $rounds rounds of H = $inner_steps," \
            "config $config, repeat $repeat" >&2
        "$wan_lab" up --hosts $((workers + 1)) --rate "$rate" --prefix "$prefix" >/dev/null
        "$wan_lab" shape "${prefix}0" --rate "$coordinator_rate" --prefix "$prefix" >/dev/null
        address="$("$wan_lab" addr "${prefix}0" --prefix "$prefix")"
        "$wan_lab" exec "${prefix}0" -- "$binary" coordinator --config "$run/run.toml" \
            --listen "$address:7070" --state "$run/state" >"$run/coordinator.out" 2>"$run/coordinator.log" &
        pids+=($!)
        for _ in $(seq 100); do grep -q "listening on" "$run/coordinator.out" 2>/dev/null && break; sleep 0.1; done
        grep -q "listening on" "$run/coordinator.out" || { cat "$run/coordinator.log" >&2; exit 1; }
        started=$(date +%s.%N)
        worker_pids=()
        for i in $(seq 1 "$workers"); do
            "$binary" keygen --out "$run/worker$i.key" >/dev/null
            "$wan_lab" exec "${prefix}$i" -- python3 "$proxy" --listen 127.0.0.1:7071 \
                --target "$address:7070" --delay-ms "$delay_ms" --duration 86400 --quiet \
                >/dev/null 2>&1 &
            pids+=($!)
        done
        sleep 0.5
        for i in $(seq 1 "$workers"); do
            "$wan_lab" exec "${prefix}$i" -- nice -n "$worker_nice" env RAYON_NUM_THREADS=1 "$binary" worker \
                --coordinator http://127.0.0.1:7071 --key "$run/worker$i.key" \
                --cache "$run/cache$i" --threads 1 --json $worker_args >"$run/worker$i.json" 2>"$run/worker$i.log" &
            worker_pids+=($!)
            pids+=($!)
        done
        failed=0
        for pid in "${worker_pids[@]}"; do wait "$pid" || failed=1; done
        finished=$(date +%s.%N)
        if [ "$failed" -ne 0 ]; then
            echo "a worker failed; logs in $run (kept)" >&2
            trap - EXIT
            teardown
            exit 1
        fi
        # The coordinator evaluates rounds in the background at idle priority,
        # so the last ones may still be queued when the workers finish: wait
        # (up to 10 minutes) until the last round has its held-out figures.
        for _ in $(seq 300); do
            status="$("$wan_lab" exec "${prefix}0" -- curl -sf "http://$address:7070/v1/status" || echo '{}')"
            [ "$status" = '{}' ] && break    # the coordinator is gone: nothing more will come
            python3 -c 'import json, sys
s = json.loads(sys.argv[1]); rounds = s.get("rounds") or [{}]
sys.exit(0 if rounds[-1].get("test_loss") is not None else 1)' "$status" && break
            sleep 2
        done
        python3 - "$run" "$workers" "$rate" "$delay_ms" "$inner_steps" "$started" "$finished" "$status" \
            "$(basename "$config" .toml)" >>"$results" <<'EOF'
import json, sys
run, workers, rate, delay, inner, started, finished, status, config = sys.argv[1:10]
workers = int(workers)
summaries = [json.load(open(f"{run}/worker{i}.json")) for i in range(1, workers + 1)]
status = json.loads(status)
rounds = status.get("completed_rounds") or max(s["rounds_trained"] for s in summaries)
utilisation = [s["compute_utilisation"] or 0.0 for s in summaries]
print(json.dumps({
    "config": config, "workers": workers, "rate": rate, "delay_ms": int(delay), "inner_steps": int(inner),
    "rounds": rounds, "seconds": float(finished) - float(started),
    "seconds_per_round": (float(finished) - float(started)) / max(rounds, 1),
    "compute_utilisation_mean": sum(utilisation) / workers,
    "compute_utilisation_min": min(utilisation),
    "training_seconds_mean": sum(s["training_seconds"] for s in summaries) / workers,
    "upload_bytes_per_round": sum(s["bytes_uploaded"] for s in summaries) / workers / max(rounds, 1),
    "download_bytes_per_round": sum(s["bytes_downloaded"] for s in summaries) / workers / max(rounds, 1),
    "test_accuracy": status.get("test_accuracy"),
    # The last evaluated round's held-out loss (the GPT's validation loss).
    "test_loss": next((r["test_loss"] for r in reversed(status.get("rounds", [])) if r.get("test_loss") is not None), None),
    # Mean seconds a round each worker spent not training, by what on.
    "idle_per_round": {
        key: sum(s.get("idle", {}).get(key, 0.0) for s in summaries) / workers / max(rounds, 1)
        for key in ("round", "model", "commit", "upload", "auditing")
    },
}))
EOF
        teardown
        # What --keep keeps is what says how the run went; the workers'
        # model caches (a model a round each, 2 GB for 8 MLP workers over
        # 200 rounds) say nothing more and fill a disk within a few runs.
        rm -rf "$run"/cache*
       done
      done
    done
done

python3 - "$results" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"{'config':>12} {'workers':>7} {'link':>8} {'delay':>6} {'H':>4} {'rounds':>6} {'s/round':>8} "
      f"{'train/round':>11} {'up/round':>10} {'down/round':>11} {'util mean':>9} {'util min':>8} {'acc/loss':>8} "
      f"  idle s/round: round model commit upload auditing")
for r in rows:
    # Accuracy for a classifier, validation loss (nats per token) for the GPT.
    if r["test_accuracy"] is not None:
        accuracy = f"{100 * r['test_accuracy']:.2f}%"
    elif r.get("test_loss") is not None:
        accuracy = f"{r['test_loss']:.4f}"
    else:
        accuracy = "-"
    idle = r["idle_per_round"]
    print(f"{r['config']:>12} {r['workers']:>7} {r['rate']:>8} {r['delay_ms']:>4}ms {r['inner_steps']:>4} "
          f"{r['rounds']:>6} {r['seconds_per_round']:>8.2f} {r['training_seconds_mean'] / max(r['rounds'], 1):>11.2f} "
          f"{r['upload_bytes_per_round'] / 1e6:>8.2f}MB "
          f"{r['download_bytes_per_round'] / 1e6:>9.2f}MB {100 * r['compute_utilisation_mean']:>8.1f}% "
          f"{100 * r['compute_utilisation_min']:>7.1f}% {accuracy:>8}   "
          f"{idle['round']:.3f} {idle['model']:.3f} {idle['commit']:.3f} {idle['upload']:.3f} {idle['auditing']:.3f}")
EOF
if [ -n "$json_out" ]; then cp "$results" "$json_out"; fi
