"""The pipeline on a real two-worker Dask cluster on loopback (--beam-mode dask) against the
session's DirectRunner digits run, with the same flags: every Beam component's artifacts are
the same, and so is the trained model.

Compared: the examples (parsed, shard by shard and in order: ImportExampleGen streams its
splits without Beam, components.example_splits, and the Beam components after it write the
same shards; proto maps serialise in a process's own order, so bytes are compared after
parsing), the
ImageValidator's bad-image reports, the statistics, schema and anomalies, the transform
graph's outputs on the same inputs, the Tuner's choice, the trained weights and the
Evaluator's metrics per class (README, "Beam engines")."""
from __future__ import annotations

import glob
import json
import os

import pytest

from pipeline import local_runner
from pipeline.config import PipelineConfig
from tests.helpers import DIGITS_FLAGS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_run, dask_cluster):
    """``(DirectRunner's pipeline root, Dask's)``: the session's digits run, and a run of the
    same flags on the cluster."""
    config = PipelineConfig.from_args(
        ["--work-dir", str(tmp_path_factory.mktemp("dask"))] + DIGITS_FLAGS
        + ["--beam-mode", "dask", "--dask-address", dask_cluster], environ={})
    outcome = local_runner.run(config)
    assert outcome.pushed, outcome
    return digits_run[0].pipeline_root, config.pipeline_root


def _first(root: str, component: str, output: str) -> str:
    """The artifact folder of the first run under ``root`` (the digits run's, in its root)."""
    folders = glob.glob(os.path.join(root, component, output, "*"))
    return min(folders, key=lambda path: int(os.path.basename(path)))


def _both(runs, component: str, output: str) -> list[str]:
    return [_first(root, component, output) for root in runs]


def _examples(folder: str, split: str) -> dict[str, list[bytes]]:
    """Each shard's examples by file name, in order, serialised deterministically (a map
    field's order is otherwise each process's own)."""
    import tensorflow as tf
    shards = {}
    for path in sorted(glob.glob(os.path.join(folder, f"Split-{split}", "*"))):
        records = tf.data.TFRecordDataset(path, "GZIP" if path.endswith(".gz") else "")
        shards[os.path.basename(path)] = [tf.train.Example.FromString(
            record.numpy()).SerializeToString(deterministic=True) for record in records]
    return shards


@pytest.mark.parametrize("component,output", [("ImportExampleGen", "examples"),
                                              ("ImageValidator", "valid_examples"),
                                              ("Transform", "transformed_examples")])
@pytest.mark.parametrize("split", ["train", "eval"])
def test_the_same_examples_in_the_same_order(runs, component, output, split):
    """Every component writes the same shards, records in the same order (the Beam ones
    through pipeline.dask_runner fix 7): the Trainer reads the same files."""
    direct, dask = (_examples(f, split) for f in _both(runs, component, output))
    assert sum(map(len, direct.values())) > 300
    assert dask == direct


def test_the_same_bad_image_reports(runs):
    direct, dask = _both(runs, "ImageValidator", "valid_examples")
    for split in ("train", "eval"):
        name = f"bad_images-{split}.json"
        assert json.load(open(os.path.join(dask, name))) == json.load(
            open(os.path.join(direct, name)))


def _proto(path: str, message):
    return message.FromString(open(path, "rb").read())


def _fields(message) -> list:
    """A proto's text as tokens, every number a float (``_same_numbers`` compares them)."""
    tokens = str(message).split()
    return [float(t) if t.lstrip("-").replace(".", "", 1).replace("e-", "", 1).isdigit()
            else t for t in tokens]


def test_the_same_statistics_schema_and_anomalies(runs):
    """Statistics to 1e-9 relative: a combine adds its bundles' partial sums in the order the
    bundles end (a standard deviation's last digit, 2.8458553241068594 and ...686, seen)."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2
    for split in ("train", "eval"):
        stats = [_fields(_proto(os.path.join(f, f"Split-{split}", "FeatureStats.pb"),
                                statistics_pb2.DatasetFeatureStatisticsList))
                 for f in _both(runs, "StatisticsGen", "statistics")]
        assert "num_examples:" in stats[0] and len(stats[1]) == len(stats[0]) > 300
        assert stats[1] == [pytest.approx(a, rel=1e-9, abs=1e-12) if isinstance(a, float)
                            else a for a in stats[0]]
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
    shards = _examples(_first(runs[0], "ImageValidator", "valid_examples"), "eval")
    raw = next(iter(shards.values()))[:64]
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


def test_the_same_model(runs):
    """The same inputs in the same order: the Tuner chooses the same, the Trainer's seeded
    shuffle draws the same batches, and the weights and every metric are the same."""
    import numpy as np
    import tensorflow as tf
    choices = [json.load(open(glob.glob(os.path.join(f, "*.txt"))[0]))
               for f in _both(runs, "Tuner", "best_hyperparameters")]
    assert choices[1] == choices[0]
    weights = []
    for folder in _both(runs, "Trainer", "model"):
        reader = tf.train.load_checkpoint(os.path.join(folder, "Format-Serving", "variables",
                                                       "variables"))
        weights.append({name: reader.get_tensor(name)
                        for name in reader.get_variable_to_shape_map()})
    assert len(weights[0]) > 4 and weights[1].keys() == weights[0].keys()
    for name, value in weights[0].items():
        assert np.array_equal(weights[1][name], value), name
    metrics = [json.load(open(os.path.join(f, "class_metrics.json")))
               for f in _both(runs, "Evaluator", "evaluation")]
    assert metrics[1] == metrics[0]
