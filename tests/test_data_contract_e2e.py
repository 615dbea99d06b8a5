"""Image folders -> ingest -> pipeline; then a curated schema stops bad spans before training.

span-1: digits ingested from class folders -> v1 pushed (the converter's output is what the
pipeline reads). The inferred schema is exported and curated. span-2 has out-of-range labels
and an unknown feature: with the inferred schema the preflight stops the run naming the first
bad record; with the curated schema validation names both anomalies, and with drift checks on
also the label distribution's drift from span-1; nothing pushed, v1 untouched. span-3: only
the unknown feature -> stops, unless that anomaly type is allowed.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf

from domain import registry
from components.anomaly_gate import DataAnomalyError
from ops import ingest, schema
from pipeline import local_runner
from pipeline.config import PipelineConfig
from pipeline.preflight import UserError
from tests.conftest import encode

FLAGS = ["--spans", "true", "--id-key", "source_path", "--train-steps", "150", "--epochs", "3",
         "--eval-steps", "5", "--min-accuracy", "0.6", "--max-regression", "0.1"]


def _digit_folders(root):
    from sklearn.datasets import load_digits
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        path = os.path.join(root, f"class-{label}", f"{i}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(encode(np.round(image * 255 / 16).astype(np.uint8), "PNG"))


def _derive_span(data, source: int, target: int, bad_label: bool, new_feature: bool):
    """Copies span ``source`` to ``target``, editing every 20th record."""
    for path in glob.glob(os.path.join(data, f"span-{source}", "*", "*.tfrecord")):
        out = path.replace(f"span-{source}", f"span-{target}")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with tf.io.TFRecordWriter(out) as writer:
            for i, record in enumerate(tf.data.TFRecordDataset(path)):
                example = tf.train.Example.FromString(record.numpy())
                if i % 20 == 0:
                    if bad_label:
                        example.features.feature["label"].int64_list.value[0] = 12
                    if new_feature:
                        example.features.feature["camera"].bytes_list.value.append(b"x100")
                writer.write(example.SerializeToString())


def _snapshot(base):
    return {f: hashlib.sha256(open(f, "rb").read()).hexdigest()
            for f in glob.glob(os.path.join(base, "**"), recursive=True) if os.path.isfile(f)}


def test_ingested_data_trains_and_a_curated_schema_stops_bad_spans(tmp_path):
    _digit_folders(str(tmp_path / "images"))
    data, work = str(tmp_path / "data"), str(tmp_path / "work")
    assert ingest.main([str(tmp_path / "images"), data, "--span", "1", "--shards", "2"]) == 0
    base = ["--data-root", data, "--work-dir", work] + FLAGS
    config = PipelineConfig.from_args(base, {})
    outcome = local_runner.run(config)
    assert outcome.pushed and registry.versions(config.push_dir) == [1]

    schema_file = str(tmp_path / "schema" / "schema.pbtxt")
    assert schema.main(["--out", schema_file] + base) == 0
    import tensorflow_data_validation as tfdv
    curated = {f.name: f for f in tfdv.load_schema_text(schema_file).feature}
    assert (curated["label"].int_domain.min, curated["label"].int_domain.max) == (0, 9)
    assert curated["image"].presence.min_fraction == 1.0
    served = _snapshot(config.push_dir)

    _derive_span(data, 1, 2, bad_label=True, new_feature=True)
    with pytest.raises(UserError, match=r"span-2/train/data-\d+-of-00002.tfrecord record 0: "
                                        r"label 12 is outside \[0, 10\)"):
        local_runner.run(config)  # inferred schema: the preflight catches the labels
    assert _snapshot(config.push_dir) == served

    contract = PipelineConfig.from_args(base + ["--schema-path", schema_file], {})
    with pytest.raises(DataAnomalyError) as error:
        local_runner.run(contract)  # the schema is the contract: every anomaly at once
    message = str(error.value)
    assert "feature 'label'" in message and "feature 'camera'" in message
    assert "SCHEMA_NEW_COLUMN" in message and "nothing is trained or pushed" in message
    assert _snapshot(config.push_dir) == served
    drift = dataclasses.replace(contract, label_drift_threshold=0.001)
    with pytest.raises(DataAnomalyError, match="train vs the served model's training data', "
                                               "feature 'label': "
                                               "COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH"):
        local_runner.run(drift)  # and the label distribution drifted from span-1's
    assert _snapshot(config.push_dir) == served

    _derive_span(data, 1, 3, bad_label=False, new_feature=True)
    with pytest.raises(DataAnomalyError, match="feature 'camera'"):
        local_runner.run(contract)
    assert _snapshot(config.push_dir) == served
    allowed = PipelineConfig.from_args(base + ["--schema-path", schema_file,
                                               "--allowed-anomalies", "SCHEMA_NEW_COLUMN"], {})
    outcome = local_runner.run(allowed)
    assert outcome.blessed and outcome.pushed
    assert registry.versions(config.push_dir) == [1, 2]
    assert registry.read_manifest(config.push_dir)[-1]["spans"] == [3]
