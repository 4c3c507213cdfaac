#!/usr/bin/env python3
"""The digits data set as image files, for the Rust training example to read.

    /work/.venv/bin/python scripts/training/digits.py export OUT_DIR [--split train|test]

Takes scikit-learn's bundled `load_digits()` (1797 8x8 images, values 0..16) and
splits it with `train_test_split(test_size=0.25, random_state=0, stratify=y)`
(1347 train / 450 test). Each image becomes an 8-bit grayscale 8x8 PNG, pixel =
floor(value * 255 / 16 + 0.5), named `{index:04d}_{label}.png` where index is the
image's position in load_digits(). The train split goes to OUT_DIR/train, the test
split to OUT_DIR/test (both unless --split picks one). Output is deterministic.

These files are not committed. `eval_digits.py` imports `load_split` and
`to_uint8` from here so that evaluation uses exactly the same split and pixels.
Needs: pip install scikit-learn pillow numpy
"""
import argparse
import pathlib

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

TEST_SIZE = 0.25
RANDOM_STATE = 0


def load_split():
    """(train_idx, test_idx, images [1797, 8, 8] in 0..16, labels [1797]) — indices into load_digits()."""
    d = load_digits()
    idx = np.arange(len(d.target))
    train_idx, test_idx = train_test_split(idx, test_size=TEST_SIZE, random_state=RANDOM_STATE,
                                           stratify=d.target)
    return np.sort(train_idx), np.sort(test_idx), d.images, d.target


def to_uint8(image):
    """8x8 values 0..16 -> 8-bit pixels, rounding half up (8 -> 127.5 -> 128)."""
    return np.floor(np.asarray(image, dtype=np.float64) * 255.0 / 16.0 + 0.5).astype(np.uint8)


def export(out_dir, splits):
    train_idx, test_idx, images, labels = load_split()
    for split, idx in (("train", train_idx), ("test", test_idx)):
        if split not in splits:
            continue
        d = pathlib.Path(out_dir) / split
        d.mkdir(parents=True, exist_ok=True)
        for i in idx:
            Image.fromarray(to_uint8(images[i]), mode="L").save(d / f"{i:04d}_{labels[i]}.png")
        counts = np.bincount(labels[idx], minlength=10)
        print(f"{d}: {len(idx)} images, per class {counts.tolist()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write the split(s) as PNGs")
    ex.add_argument("out_dir")
    ex.add_argument("--split", choices=["train", "test"], help="only this split (default: both)")
    args = ap.parse_args()
    if args.cmd == "export":
        export(args.out_dir, [args.split] if args.split else ["train", "test"])


if __name__ == "__main__":
    main()
