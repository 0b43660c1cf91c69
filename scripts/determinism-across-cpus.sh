#!/usr/bin/env bash
# Trains the same configuration natively and under qemu-user emulating other
# x86-64 CPUs, and compares the state hashes. Exits non-zero on a mismatch.
#
#   scripts/determinism-across-cpus.sh [STEPS]        (default 200)
#
# CPUs:
#   native                 this machine
#   qemu-x86_64 -cpu max   AVX2 + FMA, no AVX-512
#   qemu-x86_64 -cpu Nehalem   SSE4.2 only: no AVX, no FMA, so crowdtrain
#                          falls back to its portable kernels (software FMA,
#                          slow: it runs STEPS/10 steps, compared against a
#                          native run of the same length)
# The MLP runs on all three. The CNN runs native vs -cpu max only: its
# convolutions are candle's, which are not designed to agree without FMA.
# The GPT (a small one, on the bundled Shakespeare: every operation of the
# 4-layer model, at a fraction of the cost) runs on all three too. Last, the
# coordinator's defence (checks, worker momentum with centered clipping) in
# a DiLoCo simulation, natively and on both emulated CPUs.
# Needs the Debian package qemu-user (apt-get install qemu-user).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-200}
command -v qemu-x86_64 >/dev/null || { echo "qemu-x86_64 not found: apt-get install qemu-user" >&2; exit 2; }
cargo build --release --quiet -p crowdtrain
binary=target/release/crowdtrain
data=crates/data/assets/fashion-mnist-subset

hash_of() { # MODEL STEPS RUNNER...
    local model=$1 count=$2
    shift 2
    "$@" "$binary" train --model "$model" --steps "$count" --seed 3 --data "$data" --evaluations 1 --json \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["state_hash"], d["kernels"])'
}

status=0
check() { # LABEL MODEL STEPS RUNNER...
    local label=$1 model=$2 count=$3
    shift 3
    local reference ours
    reference=$(hash_of "$model" "$count")
    ours=$(hash_of "$model" "$count" "$@")
    local verdict=identical
    [ "${reference%% *}" = "${ours%% *}" ] || { verdict=DIFFERENT; status=1; }
    printf '%-4s %6s steps  native %s  vs %-26s %s  %s\n' "$model" "$count" "$reference" "$label" "$ours" "$verdict"
}

check "qemu -cpu max" mlp "$steps" qemu-x86_64 -cpu max
check "qemu -cpu Nehalem" mlp "$((steps / 10))" qemu-x86_64 -cpu Nehalem
check "qemu -cpu max" cnn "$((steps / 10))" qemu-x86_64 -cpu max

gpt_hash() { # STEPS RUNNER...
    local count=$1
    shift
    CROWDTRAIN_CACHE_DIR=$(mktemp -d) "$@" "$binary" train --model gpt --layers 2 --heads 2 --width 32 --context 32 \
        --batch 4 --steps "$count" --seed 3 --evaluations 1 --json \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["state_hash"], d["kernels"])'
}
for cpu in max Nehalem; do
    count=$((steps / 10))
    reference=$(gpt_hash "$count")
    ours=$(gpt_hash "$count" qemu-x86_64 -cpu "$cpu")
    verdict=identical
    [ "${reference%% *}" = "${ours%% *}" ] || { verdict=DIFFERENT; status=1; }
    printf 'gpt  %6s steps  native %s  vs qemu -cpu %-13s %s  %s\n' "$count" "$reference" "$cpu" "$ours" "$verdict"
done

defended_hash() { # RUNNER...
    "$@" "$binary" sim diloco --workers 4 --inner-steps 4 --rounds 3 --seed 3 --data "$data" \
        --aggregator centered-clip --validation-fraction 0.05 --json \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["diloco_state_hash"])'
}
reference=$(defended_hash)
for cpu in max Nehalem; do
    ours=$(defended_hash qemu-x86_64 -cpu "$cpu")
    verdict=identical
    [ "$reference" = "$ours" ] || { verdict=DIFFERENT; status=1; }
    printf 'defended DiLoCo, 3 rounds  native %s  vs qemu -cpu %-8s %s  %s\n' "$reference" "$cpu" "$ours" "$verdict"
done
exit $status
