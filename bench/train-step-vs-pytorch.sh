#!/usr/bin/env bash
# Times the same MLP training step (784-256-10, batch 64, AdamW) in PyTorch
# and in crowdtrain, in the same run, at 1 and 2 threads, and prints both
# and the ratio. Creates a venv with PyTorch from PyPI on first use (a large
# download: the PyPI wheel is the CUDA build, which runs fine on the CPU).
#
#   bench/train-step-vs-pytorch.sh [THREADS...]      (default: 1 2)
#
# Environment: VENV (default bench/.venv), STEPS (2000), REPEATS (5),
# ROUNDS (3: the two programs alternate this many times per thread count,
# so a noisy neighbour hurts both alike; the medians are reported).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${VENV:-bench/.venv}
steps=${STEPS:-2000}
repeats=${REPEATS:-5}
rounds=${ROUNDS:-3}
threads_list=("$@")
[ ${#threads_list[@]} -gt 0 ] || threads_list=(1 2)

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "creating $venv with PyTorch from PyPI (large download)..." >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet torch numpy
fi
cargo build --release --quiet -p crowdtrain
crowdtrain=target/release/crowdtrain

median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

printf '%-8s %-22s %-22s %s\n' threads "pytorch samples/s" "crowdtrain samples/s" "ratio (crowdtrain / pytorch)"
for threads in "${threads_list[@]}"; do
    torch_rates=() ours_rates=()
    for _ in $(seq "$rounds"); do
        torch_rates+=("$("$venv/bin/python" bench/pytorch_train_step.py --threads "$threads" \
            --steps "$steps" --repeats "$repeats" 2>/dev/null | field samples_per_sec)")
        ours_rates+=("$("$crowdtrain" bench train-step --model mlp --batch 64 --threads "$threads" \
            --steps "$steps" --repeats "$repeats" --json | field samples_per_sec)")
    done
    torch=$(median "${torch_rates[@]}")
    ours=$(median "${ours_rates[@]}")
    printf '%-8s %-22.0f %-22.0f %.2fx\n' "$threads" "$torch" "$ours" "$(python3 -c "print($ours / $torch)")"
done
