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

from components.image_validator import (BATCH, REPORT, BadImageError, ImageValidator,
                                        _batches, _CheckImages, _decoder, check_fractions)
from domain.features import ImageSpec
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
            for r in tf.data.TFRecordDataset(glob.glob(f"{artifact}/Split-train/*"))]
    assert sorted(kept) == [f"good{i}.img".encode() for i in range(5)]
    with open(os.path.join(artifact, REPORT.format(split="train"))) as f:
        report = json.load(f)
    assert report["valid"] == 5
    assert sorted(b["record"] for b in report["bad"]) == ["no-image", "notes.txt",
                                                         "truncated.jpg"]
    assert all(b["error"] and b["file"].startswith("data_tfrecord") for b in report["bad"])
    # Both splits' checks in this process shared one decoder, traced once.
    config = PipelineConfig(image_height=9, image_width=9, image_channels=3)
    decoder = _decoder(ImageSpec.from_custom_config(config.transform_config()))
    assert decoder.experimental_get_tracing_count() == 1


def test_a_batch_with_bad_images_names_each_and_passes_the_good_ones():
    config = PipelineConfig(image_height=9, image_width=9, image_channels=3)
    check = _CheckImages(ImageSpec.from_custom_config(config.transform_config()), "train", "path")
    check.setup()
    rng = np.random.default_rng(1)
    good = [encode(rng.integers(0, 256, (9 + i, 7, 3), dtype=np.uint8), "PNG" if i % 2 else "JPEG")
            for i in range(6)]
    records = [_example(good[0], "g0"), _example(good[1][:40], "cut"), _example(good[2], "g2"),
               _example(b"just some text", "notes.txt"), _example(good[3], "g3"),
               _example(None, "none"), _example(good[4], "g4")]
    outputs = list(check.process([(f"/d/part-{i % 2}", i, r) for i, r in enumerate(records)]))
    assert [o for o in outputs if isinstance(o, bytes)] == [records[i] for i in (0, 2, 4, 6)]
    bad = {(o.value["file"], o.value["index"], o.value["record"]): o.value["error"]
           for o in outputs if not isinstance(o, bytes)}
    assert {key: error.split(" (")[0] for key, error in bad.items()} == {
        ("part-1", 1, "cut"): "corrupt or truncated image data",
        ("part-1", 3, "notes.txt"): "not a JPEG, PNG, GIF, BMP or WebP image",
        ("part-1", 5, "none"): "no 'image' feature"}
    # A batch of good images only is one decode, and passes whole.
    assert list(check.process([("/d/p", i, _example(g, "g")) for i, g in enumerate(good)])) == [
        _example(g, "g") for g in good]


def test_records_are_read_in_batches_with_their_index_in_the_file(tmp_path):
    path = str(tmp_path / "part.tfrecord.gz")
    records = [_example(None, f"r{i}") for i in range(BATCH + 3)]
    with tf.io.TFRecordWriter(path, "GZIP") as writer:
        for record in records:
            writer.write(record)
    batches = list(_batches(path))
    assert [len(b) for b in batches] == [BATCH, 3]
    assert [item for b in batches for item in b] == [(path, i, r) for i, r in enumerate(records)]


def test_check_fractions():
    report = {"valid": 99, "bad": [{"file": "f", "index": 0, "record": "r", "error": "e"}]}
    check_fractions({"train": report}, 0.01)
    with pytest.raises(BadImageError, match="1 of 100"):
        check_fractions({"train": report}, 0.005)
