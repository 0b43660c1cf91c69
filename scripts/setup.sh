#!/usr/bin/env bash
# One command from a fresh Debian machine to a trained model: installs the
# prerequisites, builds crowdtrain, and runs its main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-prerequisites.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release -p crowdtrain
mkdir -p out
# The main job: a coordinator and 4 workers as separate processes, training
# over HTTP on this machine.
target/release/crowdtrain demo --workers 4 --rounds 20 --plot out/demo.png
