#!/usr/bin/env bash
# The same GPT (nanoGPT's CPU quick-start: 4 layers, 4 heads, width 128,
# context 64, batch 12; AdamW lr 1e-3 betas 0.9/0.99, weight decay 0.1 on
# matrices, clipping at 1, 100 warmup steps then cosine decay to 1e-4) in
# PyTorch and in crowdtrain, alternated in the same run:
#
#   1. training speed at 1 and 2 threads: tokens per second on fixed random
#      batches (bench/pytorch_gpt.py time vs crowdtrain bench train-step),
#      ROUNDS alternations per thread count, medians and their ratio;
#   2. validation loss after STEPS steps on the bundled Shakespeare with the
#      character tokenizer and crowdtrain's split (last tenth), one run each
#      at 1 thread, and the difference.
#
#   bench/gpt-vs-pytorch.sh [THREADS...]      (default: 1 2)
#
# Environment: VENV (bench/.venv; created with PyTorch from PyPI if missing),
# TIMED_STEPS (50 per repetition), REPEATS (3), ROUNDS (3), STEPS (2000;
# 0 skips part 2).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${VENV:-bench/.venv}
timed=${TIMED_STEPS:-50}
repeats=${REPEATS:-3}
rounds=${ROUNDS:-3}
steps=${STEPS:-2000}
threads_list=("$@")
[ ${#threads_list[@]} -gt 0 ] || threads_list=(1 2)
text=crates/data/assets/shakespeare/shakespeare-subset.txt.gz

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, safetensors" 2>/dev/null; then
    echo "creating $venv with PyTorch from PyPI (large download)..." >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet torch numpy safetensors
fi
cargo build --release --quiet -p crowdtrain
crowdtrain=target/release/crowdtrain

median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

printf '%-8s %-20s %-22s %s\n' threads "pytorch tokens/s" "crowdtrain tokens/s" "ratio (crowdtrain / pytorch)"
for threads in "${threads_list[@]}"; do
    torch_rates=() ours_rates=()
    for _ in $(seq "$rounds"); do
        torch_rates+=("$("$venv/bin/python" bench/pytorch_gpt.py time --threads "$threads" \
            --steps "$timed" --repeats "$repeats" 2>/dev/null | field tokens_per_sec)")
        ours_rates+=("$("$crowdtrain" bench train-step --model gpt --threads "$threads" \
            --steps "$timed" --warmup 10 --repeats "$repeats" --json | field tokens_per_sec)")
    done
    torch=$(median "${torch_rates[@]}")
    ours=$(median "${ours_rates[@]}")
    printf '%-8s %-20.0f %-22.0f %.2fx\n' "$threads" "$torch" "$ours" "$(python3 -c "print($ours / $torch)")"
done

[ "$steps" -gt 0 ] || exit 0
echo
echo "validation loss after $steps steps (1 thread each):"
torch_json=$("$venv/bin/python" bench/pytorch_gpt.py train --text "$text" --steps "$steps" --threads 1)
ours_json=$("$crowdtrain" train --model gpt --steps "$steps" --data "$text" --threads 1 --evaluations 1 --json)
torch_loss=$(echo "$torch_json" | field val_loss)
ours_loss=$(echo "$ours_json" | field val_loss)
printf '  pytorch    %.4f nats/token (%.0f tokens/s)\n' "$torch_loss" "$(echo "$torch_json" | field tokens_per_sec)"
printf '  crowdtrain %.4f nats/token (%.0f tokens/s, state %s)\n' "$ours_loss" \
    "$(echo "$ours_json" | field tokens_per_sec)" "$(echo "$ours_json" | field state_hash | cut -c1-16)"
printf '  difference (crowdtrain - pytorch): %+.4f\n' "$(python3 -c "print($ours_loss - $torch_loss)")"
