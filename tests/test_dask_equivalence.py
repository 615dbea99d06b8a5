"""The pipeline on a real two-worker Dask cluster on loopback (--beam-mode dask) against the
session's DirectRunner digits run: every Beam component's artifacts are the same.

Compared: the examples (parsed; per split, every shard in order: the Dask run writes a shard
per bundle, numbered at random, and proto maps serialise in a process's own order), the
ImageValidator's valid examples and bad-image reports, the statistics, schema and anomalies,
the transform graph's outputs on the same inputs and its transformed examples, and the
Evaluator's counts per class. The model is not compared here (this run trains less, to stay
short; README, "Beam engines", on the accuracy)."""
from __future__ import annotations

import glob
import json
import os

import pytest

from pipeline import local_runner
from pipeline.config import PipelineConfig
from tools.dask_cluster import loopback_cluster

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_run):
    """``(DirectRunner's pipeline root, Dask's)``: the session's digits run, and a run on
    the cluster of the same data and image spec."""
    with loopback_cluster() as address:
        config = PipelineConfig.from_args(
            ["--work-dir", str(tmp_path_factory.mktemp("dask")), "--train-steps", "40",
             "--eval-steps", "5", "--min-accuracy", "0", "--beam-mode", "dask", "--dask-address",
             address], environ={})
        outcome = local_runner.run(config)
    assert outcome.pushed, outcome
    return digits_run[0].pipeline_root, config.pipeline_root


def _first(root: str, component: str, output: str) -> str:
    """The artifact folder of the first run under ``root`` (the digits run's, in its root)."""
    folders = glob.glob(os.path.join(root, component, output, "*"))
    return min(folders, key=lambda path: int(os.path.basename(path)))


def _both(runs, component: str, output: str) -> list[str]:
    return [_first(root, component, output) for root in runs]


def _examples(folder: str, split: str) -> list[list[bytes]]:
    """Each shard's examples, in order, serialised deterministically (a map field's order
    is otherwise each process's own)."""
    import tensorflow as tf
    shards = []
    for path in sorted(glob.glob(os.path.join(folder, f"Split-{split}", "*"))):
        records = tf.data.TFRecordDataset(path, "GZIP" if path.endswith(".gz") else "")
        shards.append([tf.train.Example.FromString(record.numpy()).SerializeToString(
            deterministic=True) for record in records])
    return shards


@pytest.mark.parametrize("component,output", [("ImportExampleGen", "examples"),
                                              ("ImageValidator", "valid_examples"),
                                              ("Transform", "transformed_examples")])
@pytest.mark.parametrize("split", ["train", "eval"])
def test_the_same_examples(runs, component, output, split):
    """The same examples. Dask writes a shard per bundle, numbered in the order of its temp
    files' random names: ImportExampleGen's shards are each a run of the DirectRunner's
    sequence, and the components after it read those shards in their numbered order."""
    direct_shards, dask_shards = (_examples(f, split) for f in _both(runs, component, output))
    direct = [example for shard in direct_shards for example in shard]
    assert len(direct) > 300
    assert sorted(e for shard in dask_shards for e in shard) == sorted(direct)
    for shard in dask_shards if component == "ImportExampleGen" else ():
        start = direct.index(shard[0])
        assert direct[start:start + len(shard)] == shard


def test_the_same_bad_image_reports(runs):
    direct, dask = _both(runs, "ImageValidator", "valid_examples")
    for split in ("train", "eval"):
        name = f"bad_images-{split}.json"
        assert json.load(open(os.path.join(dask, name))) == json.load(
            open(os.path.join(direct, name)))


def _proto(path: str, message):
    return message.FromString(open(path, "rb").read())


def test_the_same_statistics_schema_and_anomalies(runs):
    from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2
    for split in ("train", "eval"):
        stats = [_proto(os.path.join(f, f"Split-{split}", "FeatureStats.pb"),
                        statistics_pb2.DatasetFeatureStatisticsList)
                 for f in _both(runs, "StatisticsGen", "statistics")]
        assert stats[0].datasets[0].num_examples > 300 and stats[1] == stats[0]
        anomalies = [_proto(os.path.join(f, f"Split-{split}", "SchemaDiff.pb"),
                            anomalies_pb2.Anomalies)
                     for f in _both(runs, "ExampleValidator", "anomalies")]
        assert anomalies[1] == anomalies[0]
    schemas = [open(os.path.join(f, "schema.pbtxt")).read()
               for f in _both(runs, "SchemaGen", "schema")]
    assert "image" in schemas[0] and schemas[1] == schemas[0]


def test_the_same_transform_outputs_on_the_same_inputs(runs):
    import tensorflow as tf
    import tensorflow_transform as tft
    raw = _examples(_first(runs[0], "ImageValidator", "valid_examples"), "eval")[0][:64]
    outputs = []
    for folder in _both(runs, "Transform", "transform_graph"):
        graph = tft.TFTransformOutput(folder)
        spec = graph.raw_feature_spec()
        features = tf.io.parse_example(raw, spec)
        outputs.append({k: v.numpy().tolist() for k, v in
                        graph.transform_raw_features(features).items()})
    assert outputs[0] and outputs[1] == outputs[0]


def test_the_same_evaluation_counts(runs):
    supports = []
    for folder in _both(runs, "Evaluator", "evaluation"):
        classes = json.load(open(os.path.join(folder, "class_metrics.json")))["candidate"]
        supports.append({c["class"]: c["support"] for c in classes})
    assert sum(supports[0].values()) == 360 and supports[1] == supports[0]
