"""ImportExampleGen's executor without TFX's in-memory reshuffle (``components.example_splits``):
ingest's SHA-256-ordered records copied as they are, any other records (here in class order)
written in SHA-256 order through bounded spill buckets, the same bytes on every run, and a
validation part of the first batches in file order that holds every class."""
from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import re

import pytest
import tensorflow as tf
from google.protobuf import json_format
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts, standard_component_specs as keys

from components import example_splits
from components.standard import _SpanResolvingExecutor
from domain.records import read_records, write_record
from modules.data import is_validation

CLASSES = 3


def _example(label: int, index: int) -> bytes:
    image = hashlib.sha256(f"{label}-{index}".encode()).digest() * 8  # distinct "image" bytes
    return tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))})
    ).SerializeToString()


def _label(record: bytes) -> int:
    return tf.train.Example.FromString(record).features.feature["label"].int64_list.value[0]


def _write(path: str, records: list[bytes]) -> None:
    with (gzip.open(path, "wb") if path.endswith(".gz") else open(path, "wb")) as f:
        for record in records:
            write_record(f, record)


def _class_ordered(root, per_class=40, order=None) -> dict[str, list[list[bytes]]]:
    """Each split in class order over two files (one gzip), as a user might write them;
    ``order``: the manifest's."""
    splits = {}
    for split, count in (("train", per_class), ("eval", per_class // 4)):
        records = [_example(label, i) for label in range(CLASSES) for i in range(count)]
        half = len(records) // 2
        files = [records[:half], records[half:]]
        os.makedirs(root / split)
        for name, part in zip(("a.tfrecord.gz", "b.tfrecord"), files):
            _write(str(root / split / name), part)
        splits[split] = files
    if order:
        (root / "manifest.json").write_text(json.dumps({"order": order}))
    return splits


def _run(data_root, out) -> standard_artifacts.Examples:
    examples = standard_artifacts.Examples()
    examples.uri = str(out)
    _SpanResolvingExecutor().Do({}, {keys.EXAMPLES_KEY: [examples]}, {
        keys.INPUT_BASE_KEY: str(data_root), "span": 0, "version": None,
        keys.INPUT_CONFIG_KEY: json_format.MessageToJson(example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name=s, pattern=f"{s}/*") for s in ("train", "eval")])),
        keys.OUTPUT_CONFIG_KEY: "{}",
        keys.OUTPUT_DATA_FORMAT_KEY: example_gen_pb2.FORMAT_TF_EXAMPLE,
        keys.OUTPUT_FILE_FORMAT_KEY: example_gen_pb2.FORMAT_TFRECORDS_GZIP})
    return examples


def _files(out, split: str) -> list[str]:
    return sorted(glob.glob(os.path.join(str(out), f"Split-{split}", "*")))


def _records(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        return list(read_records(f))


def _digest(record: bytes) -> bytes:
    return hashlib.sha256(record).digest()


def test_class_ordered_records_come_out_in_sha256_order_the_same_bytes_each_run(
        tmp_path, monkeypatch):
    inputs = _class_ordered(tmp_path / "data")
    monkeypatch.setattr(example_splits, "BUCKET_BYTES", 4096)  # several spill buckets
    examples = _run(tmp_path / "data", tmp_path / "out")
    assert examples.split_names == '["train", "eval"]'
    assert examples.get_string_custom_property("payload_format") == "FORMAT_TF_EXAMPLE"
    for split, files in inputs.items():
        shards = [_records(path) for path in _files(tmp_path / "out", split)]
        written = [record for shard in shards for record in shard]
        assert len(shards) == example_splits.buckets(glob.glob(str(tmp_path / "data" / split /
                                                                   "*"))) > 1
        assert written == sorted(files[0] + files[1], key=_digest)
    rerun = _run(tmp_path / "data", tmp_path / "rerun")
    for split in inputs:
        first, again = _files(tmp_path / "out", split), _files(rerun.uri, split)
        assert [os.path.basename(p) for p in first] == [os.path.basename(p) for p in again]
        assert all(open(a, "rb").read() == open(b, "rb").read() for a, b in zip(first, again))


def test_the_first_validation_batch_of_class_ordered_input_holds_every_class(tmp_path):
    """``modules.data`` validates on the first batches of the train split's validation part in
    file order; from class-ordered input that would be one class without the SHA-256 order."""
    inputs = _class_ordered(tmp_path / "data", per_class=200)
    _run(tmp_path / "data", tmp_path / "out")

    def first_validation_labels(records: list[bytes], batch: int = 12) -> set[int]:
        features = [tf.train.Example.FromString(r).features.feature for r in records]
        part = [f["label"].int64_list.value[0] for f in features
                if is_validation(tf.constant([f["image"].bytes_list.value[0]]), 20)]
        return set(part[:batch])

    ordered = [r for path in _files(tmp_path / "out", "train") for r in _records(path)]
    assert len(first_validation_labels(inputs["train"][0] + inputs["train"][1])) == 1
    assert first_validation_labels(ordered) == set(range(CLASSES))


def test_records_ingest_wrote_in_sha256_order_are_copied_file_by_file(tmp_path):
    inputs = _class_ordered(tmp_path / "data", order=example_splits.ORDERED)
    _run(tmp_path / "data", tmp_path / "out")
    for split, files in inputs.items():
        assert [_records(p) for p in _files(tmp_path / "out", split)] == files
        assert [os.path.basename(p) for p in _files(tmp_path / "out", split)] == [
            f"data_tfrecord-0000{i}-of-00002" for i in range(2)]
    assert [_label(r) for r in _records(_files(tmp_path / "out", "eval")[0])][:3] == [0, 0, 0]


def test_a_truncated_input_file_is_named(tmp_path):
    _class_ordered(tmp_path / "data")
    path = tmp_path / "data" / "train" / "b.tfrecord"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: truncated TFRecord file"):
        _run(tmp_path / "data", tmp_path / "out")
