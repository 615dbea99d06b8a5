"""ImageValidator in a real (two-component) TFX pipeline: bad images named, dropped or fatal."""
from __future__ import annotations

import glob
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from tfx import v1 as tfx

from components.image_validator import REPORT, BadImageError, ImageValidator, check_fractions
from pipeline.config import PipelineConfig
from tests.conftest import encode


def _example(image: bytes | None, ident: str) -> bytes:
    feature = {"path": tf.train.Feature(bytes_list=tf.train.BytesList(value=[ident.encode()])),
               "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}
    if image is not None:
        feature["image"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


@pytest.fixture(scope="module")
def messy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    rng = np.random.default_rng(0)
    good = [encode(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8), fmt)
            for fmt in ("PNG", "JPEG", "PNG", "JPEG", "PNG")]
    records = {"train": [_example(g, f"good{i}.img") for i, g in enumerate(good)]
               + [_example(good[1][:60], "truncated.jpg"),
                  _example(b"just some text\n", "notes.txt"),
                  _example(None, "no-image")],
               "eval": [_example(g, f"eval{i}.img") for i, g in enumerate(good)]}
    for split, items in records.items():
        os.makedirs(root / split)
        with tf.io.TFRecordWriter(str(root / split / "part.tfrecord")) as writer:
            for record in items:
                writer.write(record)
    return str(root)


def _run(data_root, work, max_bad_fraction):
    config = PipelineConfig(image_height=9, image_width=9, image_channels=3)
    example_gen = tfx.components.ImportExampleGen(
        input_base=data_root, input_config=tfx.proto.Input(splits=[
            tfx.proto.Input.Split(name=s, pattern=f"{s}/*") for s in ("train", "eval")]))
    validator = ImageValidator(examples=example_gen.outputs["examples"],
                               image_config=json.dumps(config.transform_config()),
                               max_bad_fraction=max_bad_fraction, id_key="path")
    tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
        pipeline_name="validator-test", pipeline_root=str(work / "root"),
        components=[example_gen, validator], beam_pipeline_args=config.beam_pipeline_args,
        metadata_connection_config=tfx.orchestration.metadata
        .sqlite_metadata_connection_config(str(work / "mlmd.sqlite"))))
    return glob.glob(str(work / "root" / "ImageValidator" / "valid_examples" / "*"))


def test_too_many_bad_images_stop_the_run_naming_each(messy_data, tmp_path):
    with pytest.raises(BadImageError) as error:
        _run(messy_data, tmp_path, max_bad_fraction=0.1)
    message = str(error.value)
    assert "split 'train': 3 of 8 images cannot be decoded" in message
    for name, cause in (("truncated.jpg", "corrupt or truncated image data"),
                        ("notes.txt", "not a JPEG, PNG, GIF, BMP or WebP image"),
                        ("no-image", "no 'image' feature")):
        assert re.search(rf"data_tfrecord\S+ record \d+ \({re.escape(name)}\): "
                         rf"{re.escape(cause)}", message), message
    assert "function_node" not in message and "[[" not in message


def test_tolerated_bad_images_are_dropped_and_reported(messy_data, tmp_path):
    [artifact] = _run(messy_data, tmp_path, max_bad_fraction=0.5)
    kept = [tf.train.Example.FromString(r.numpy()).features.feature["path"].bytes_list.value[0]
            for r in tf.data.TFRecordDataset(glob.glob(f"{artifact}/Split-train/*"),
                                             compression_type="GZIP")]
    assert sorted(kept) == [f"good{i}.img".encode() for i in range(5)]
    with open(os.path.join(artifact, REPORT.format(split="train"))) as f:
        report = json.load(f)
    assert report["valid"] == 5
    assert sorted(b["record"] for b in report["bad"]) == ["no-image", "notes.txt",
                                                         "truncated.jpg"]
    assert all(b["error"] and b["file"].startswith("data_tfrecord") for b in report["bad"])


def test_check_fractions():
    report = {"valid": 99, "bad": [{"file": "f", "index": 0, "record": "r", "error": "e"}]}
    check_fractions({"train": report}, 0.01)
    with pytest.raises(BadImageError, match="1 of 100"):
        check_fractions({"train": report}, 0.005)
