"""Regenerate the Fashion-MNIST subset shipped in weightdecay/experiments/data/.

A fixed, seeded, class-balanced subset: 1,000 training and 200 test images of
each of the 10 classes, written as gzipped IDX files (deterministic bytes:
no file name or time stamp in the gzip header).

    python scripts/make_embedded_subset.py [--source DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np

from weightdecay.experiments.data import (
    EMBEDDED_DIR,
    FILES,
    IMAGES_MAGIC,
    LABELS_MAGIC,
    SYSTEM_DIR,
    DataSource,
    find_data,
    load_data,
)

SEED = 20171105
TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200


def balanced_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` seeded indices of each class, in ascending order."""
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
        for c in range(10)
    ]
    return np.sort(np.concatenate(chosen))


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """Write ``array`` (uint8) as a gzipped IDX file with a fixed header."""
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0
        ) as out,
    ):
        out.write(payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SYSTEM_DIR)
    parser.add_argument("--out", type=Path, default=EMBEDDED_DIR)
    args = parser.parse_args()

    source: DataSource = find_data(args.source)
    train_x, train_y, test_x, test_y = load_data(source)
    if len(train_x) != 60_000 or len(test_x) != 10_000:
        raise SystemExit(f"{args.source}: expected the full data set")
    train_idx = balanced_indices(train_y, TRAIN_PER_CLASS, SEED)
    test_idx = balanced_indices(test_y, TEST_PER_CLASS, SEED + 1)

    args.out.mkdir(parents=True, exist_ok=True)
    parts = {
        "train_images": (train_x[train_idx], IMAGES_MAGIC),
        "train_labels": (train_y[train_idx], LABELS_MAGIC),
        "test_images": (test_x[test_idx], IMAGES_MAGIC),
        "test_labels": (test_y[test_idx], LABELS_MAGIC),
    }
    for key, (array, magic) in parts.items():
        path = args.out / (FILES[key] + ".gz")
        write_idx(path, array, magic)
        print(f"{path}: {array.shape}, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
