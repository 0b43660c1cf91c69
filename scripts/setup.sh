#!/usr/bin/env bash
# One command from a fresh Debian machine to a trained model: installs the
# prerequisites, builds crowdtrain, and runs its main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-prerequisites.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release -p crowdtrain
mkdir -p out
# The main job: DiLoCo with 8 workers and 50 inner steps per round against
# synchronous data parallelism, on full Fashion-MNIST.
target/release/crowdtrain sim diloco --workers 8 --inner-steps 50 --rounds 30 --plot out/diloco.png
