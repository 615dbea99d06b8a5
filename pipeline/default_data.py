"""The embedded default dataset: scikit-learn's handwritten digits as PNG tf.Examples."""
from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

SPLITS = ("train", "eval")
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

    Written to a temporary sibling and renamed, so an interrupted write is never reused (and
    an unchanged dataset keeps ImportExampleGen's fingerprint, so reruns hit the cache).
    """
    target = Path(root)
    if target.is_dir():
        return str(target)
    import tensorflow as tf

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".digits-", dir=target.parent))
    try:
        writers = {}
        for split in SPLITS:
            (staging / split).mkdir()
            writers[split] = [tf.io.TFRecordWriter(
                str(staging / split / f"digits-{i:05d}-of-{shards:05d}.tfrecord"))
                for i in range(shards)]
        counts = dict.fromkeys(SPLITS, 0)
        for split, record in digits_examples(image_key, label_key):
            writers[split][counts[split] % shards].write(record)
            counts[split] += 1
        for shard_writers in writers.values():
            for writer in shard_writers:
                writer.close()
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
