"""The float digits generator (tools/make_digits.py) writes what the raw-pixel options read."""
from __future__ import annotations

import glob
import os
import sys

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tools"))
from make_digits import write_digits  # noqa: E402


def test_centred_float_pixels_in_two_splits(tmp_path):
    counts = write_digits(str(tmp_path / "digits"), count=50, size=28, low=-0.5, high=0.5)
    assert counts == {"train": 40, "eval": 10}
    files = glob.glob(str(tmp_path / "digits" / "train" / "*.tfrecord"))
    examples = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files)]
    pixels = np.array([e.features.feature["image"].float_list.value for e in examples])
    assert pixels.shape == (40, 28 * 28)
    assert pixels.min() == -0.5 and 0.4 < pixels.max() <= 0.5
    labels = {e.features.feature["label"].int64_list.value[0] for e in examples}
    assert labels <= set(range(10)) and len(labels) > 5
