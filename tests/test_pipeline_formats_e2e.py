"""End to end on TFRecords someone else wrote: raw pixel lists and string labels."""
from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from domain.features import CLASS_NAMES
from pipeline import local_runner
from pipeline.config import PipelineConfig

NAMES = "zero one two three four five six seven eight nine".split()


def _example(pixels, label=None):
    feature = {"pixels": tf.train.Feature(int64_list=tf.train.Int64List(value=pixels))}
    if label is not None:
        feature["digit"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[label.encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _write_raw_digits(root):
    from sklearn.datasets import load_digits
    digits = load_digits()
    held_out = []
    writers = {}
    for split in ("train", "eval"):
        os.makedirs(os.path.join(root, split))
        writers[split] = tf.io.TFRecordWriter(os.path.join(root, split, "part-0.tfrecord"))
    for i, (image, target) in enumerate(zip(digits.data.astype(int), digits.target)):
        split = "eval" if i % 4 == 0 else "train"
        writers[split].write(_example(image.tolist(), NAMES[target]).SerializeToString())
        if split == "eval":
            held_out.append((image.tolist(), NAMES[target]))
    for writer in writers.values():
        writer.close()
    return held_out


def test_raw_pixels_with_string_labels_train_gate_and_serve_class_names(tmp_path):
    held_out = _write_raw_digits(str(tmp_path / "data"))
    config = PipelineConfig(
        work_dir=str(tmp_path / "work"), data_root=str(tmp_path / "data"),
        image_key="pixels", label_key="digit", image_format="raw", raw_height=8, raw_width=8,
        raw_channels=1, raw_max_value=16, label_format="string", image_height=16,
        image_width=16, train_steps=150, epochs=3, eval_steps=5, min_accuracy=0.6)
    outcome = local_runner.run(config)
    assert outcome.blessed and outcome.pushed and outcome.accuracy >= 0.6

    model = tf.saved_model.load(outcome.pushed_path)
    assert sorted(n.decode() for n in model.class_names.numpy()) == sorted(NAMES)
    records = tf.constant([_example(p).SerializeToString() for p, _ in held_out])
    predicted = model.signatures["serving_default"](examples=records)[CLASS_NAMES].numpy()
    accuracy = np.mean([p.decode() == name for p, (_, name) in zip(predicted, held_out)])
    assert accuracy == pytest.approx(outcome.accuracy, abs=1e-6)
