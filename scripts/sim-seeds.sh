#!/usr/bin/env bash
# Runs the network simulator on new seeds for as long as it is given, and
# reports the first seed that breaks an invariant (with the command that
# reproduces it), or how many seeds passed.
#
#   scripts/sim-seeds.sh [SECONDS]     (default 60)
#
# Seeds start from the clock (so each call tries new ones) in batches of
# 200 small networks (`crowdtrain sim network --seeds A..B`, the defaults:
# 12 workers, 8 rounds, churn, attackers and every fault; odd seeds delegate
# their audits to workers, seeds 2 and 3 modulo 4 take bonds). Extra
# arguments after SECONDS go to `sim network` (e.g. --workers 50 --rounds 20,
# or --auditors workers --bond 300 to fix them, or --near-copiers 0.2).
#
# The training mode is an argument too: `--training model` runs the real
# MLP training and bit-exact replays (seconds a seed, so in batches of 10),
# e.g. `scripts/sim-seeds.sh 300 --training model --workers 6 --rounds 3
# --near-copiers 0.2`.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
cargo build --release --quiet -p crowdtrain
binary=$PWD/target/release/crowdtrain
batch=200
for argument in "$@"; do
    if [[ $argument == model || $argument == --training=model ]]; then
        batch=10
    fi
done
start=$(( $(date +%s) * 1000 ))
seed=$start
deadline=$(( $(date +%s) + seconds ))
while (( $(date +%s) < deadline )); do
    if ! "$binary" sim network --seeds "$seed..$(( seed + batch ))" "$@"; then
        echo "a seed in $seed..$(( seed + batch )) broke an invariant (above: the seed and its command)" >&2
        exit 1
    fi
    seed=$(( seed + batch ))
done
echo "seeds $start..$seed: $(( seed - start )) runs, no invariant broken"
