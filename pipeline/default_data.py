"""The embedded default dataset: scikit-learn's handwritten digits as PNG tf.Examples."""
from __future__ import annotations

import io
import os

import numpy as np

from domain.features import SPLITS
from domain.records import write_splits

EVAL_EVERY = 5  # every 5th image (by index) is held out: a deterministic 80/20 split


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def digits_examples(image_key: str = "image", label_key: str = "label"):
    """Yields ``(split, serialized tf.Example)`` for the 1,797 8x8 digit images."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for index, (image, label) in enumerate(zip(pixels, digits.target)):
        example = tf.train.Example(features=tf.train.Features(feature={
            image_key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[png_bytes(image)])),
            label_key: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        }))
        yield SPLITS[index % EVAL_EVERY == 0], example.SerializeToString()


def ensure_digits_dataset(root: str, image_key: str = "image", label_key: str = "label",
                          shards: int = 2) -> str:
    """Writes ``root/{train,eval}/digits-0000N-of-0000M.tfrecord`` once; returns ``root``.

    Written to a temporary sibling and renamed, so an interrupted write is never reused and a
    concurrent first run's identical copy is taken as it is (an unchanged dataset keeps
    ImportExampleGen's fingerprint, so reruns hit the cache).
    """
    if not os.path.isdir(root):
        try:
            write_splits(root, digits_examples(image_key, label_key), shards, "digits")
        except FileExistsError:  # a concurrent first run wrote the same data
            pass
    return root
