#!/usr/bin/env python3
"""Rebuilds the Fashion-MNIST subset bundled into the crowdtrain binary.

Takes the first TRAIN training and TEST test images (and labels) of the full
data set, in file order, and writes them as gzipped IDX files. Standard
library only, so it runs anywhere Python 3 does.

    python3 scripts/make-fashion-subset.py [SOURCE_DIR] [OUT_DIR]

Defaults: /usr/share/datasets/fashion-mnist (Debian package
dataset-fashion-mnist) and crates/data/assets/fashion-mnist-subset.
"""
import gzip
import os
import struct
import sys

TRAIN, TEST = 2000, 500


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, rank = struct.unpack(">HBB", data[:4])
    assert zero == 0 and dtype == 0x08, f"{path}: not an IDX file of bytes"
    dims = list(struct.unpack(">" + "I" * rank, data[4 : 4 + 4 * rank]))
    return dims, data[4 + 4 * rank :]


def write_idx(path, dims, payload):
    header = struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(">" + "I" * len(dims), *dims)
    # mtime=0 keeps the output byte-identical from one run to the next.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(header + payload)


def main():
    source = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
    out = sys.argv[2] if len(sys.argv) > 2 else "crates/data/assets/fashion-mnist-subset"
    os.makedirs(out, exist_ok=True)
    for prefix, count in (("train", TRAIN), ("t10k", TEST)):
        dims, images = read_idx(os.path.join(source, f"{prefix}-images-idx3-ubyte.gz"))
        size = dims[1] * dims[2]
        write_idx(os.path.join(out, f"{prefix}-images-idx3-ubyte.gz"), [count, dims[1], dims[2]], images[: count * size])
        _, labels = read_idx(os.path.join(source, f"{prefix}-labels-idx1-ubyte.gz"))
        write_idx(os.path.join(out, f"{prefix}-labels-idx1-ubyte.gz"), [count], labels[:count])
        print(f"{prefix}: {count} images of {dims[1]}x{dims[2]}")


if __name__ == "__main__":
    main()
