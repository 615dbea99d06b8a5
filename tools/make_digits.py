"""MNIST-like float digits for benchmarks: ``python tools/make_digits.py OUT``.

Writes ``OUT/{train,eval}/digits-00000-of-00001.tfrecord``: scikit-learn's 8x8 handwritten
digits scaled to 20x20 at a random place on a ``size`` x ``size`` canvas, as raw float pixels
in ``[low, high]`` (``image`` float list, ``label`` int64), every 5th image held out. Read them
with ``--image-format raw --raw-height 28 --raw-width 28 --raw-channels 1 --raw-min-value
-0.5 --raw-max-value 0.5``. Deterministic for a ``--seed``.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from pipeline.default_data import EVAL_EVERY
from domain.records import write_splits


def digit_images(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images ``[size, size]`` in [0, 1] and their labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(digits.images), count, replace=count > len(digits.images))
    images = np.zeros((count, size, size), np.float32)
    for image, pick in zip(images, picks):
        glyph = Image.fromarray((digits.images[pick] * 255 / 16).astype(np.uint8))
        glyph = np.asarray(glyph.resize((20, 20), Image.BILINEAR), np.float32) / 255
        top, left = rng.integers(0, size - 19, 2)
        image[top:top + 20, left:left + 20] = glyph
    return images, digits.target[picks]


def write_digits(out: str, count: int = 1000, size: int = 28, low: float = -0.5,
                 high: float = 0.5, seed: int = 0) -> dict[str, int]:
    """Writes the two splits (``out`` must not exist or be empty); returns the number of
    examples in each."""
    import tensorflow as tf

    images, labels = digit_images(count, size, seed)

    def records():
        for index, (image, label) in enumerate(zip(images, labels)):
            yield ("eval" if index % EVAL_EVERY == 0 else "train"), tf.train.Example(
                features=tf.train.Features(feature={
                    "image": tf.train.Feature(float_list=tf.train.FloatList(
                        value=(low + image.ravel() * (high - low)).tolist())),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                })).SerializeToString()

    return write_splits(out, records(), 1, "digits")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/make_digits.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=28, help="canvas side, at least 20")
    parser.add_argument("--low", type=float, default=-0.5)
    parser.add_argument("--high", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.size < 20 or args.count < 1 or args.high <= args.low:
        parser.error("need --size >= 20, --count >= 1 and --high > --low")
    counts = write_digits(args.out, args.count, args.size, args.low, args.high, args.seed)
    print(f"{counts['train']} train and {counts['eval']} eval digits in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
