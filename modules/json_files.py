"""JSON files on any filesystem TensorFlow reads (``tf.io.gfile``): the Trainer's outputs."""
from __future__ import annotations

import json
import os

import tensorflow as tf


def read_json(path: str) -> dict:
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def write_json(path: str, value: dict) -> None:
    """Writes ``value`` (indented, keys sorted), making the directory."""
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
