"""AnomalyGate: stop the run when ExampleValidator found anomalies against the schema.

Runs between ExampleValidator and Transform (Transform waits for it), so data that breaks the
schema is neither trained on nor pushed. The error lists each anomaly: split, feature, type,
description. ``allowed_types`` (comma-separated anomaly type names, e.g.
``SCHEMA_NEW_COLUMN``) only log a warning. Given the statistics of the data the served model
was trained on (``ServedModel``; empty while nothing is served), it also compares the
training split's label distribution (L-infinity distance for string labels, Jensen-Shannon
divergence for ids) and image size features (Jensen-Shannon divergence) with TFDV's drift
comparators. (No ``from __future__ import annotations``: TFX reads the annotations at run
time.)
"""
import json
import os

import absl.logging
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts

from components.live_inputs import TRAIN_STATISTICS

ANOMALIES_FILE = "SchemaDiff.pb"


class DataAnomalyError(ValueError):
    """The data does not match the schema; the message lists every anomaly."""


def describe(split: str, anomalies: anomalies_pb2.Anomalies) -> list[dict]:
    """One entry per (feature, anomaly reason) of a split."""
    found = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        for reason in info.reason:
            found.append({"split": split, "feature": feature,
                          "type": anomalies_pb2.AnomalyInfo.Type.Name(reason.type),
                          "description": reason.description or info.description})
    for reason in anomalies.dataset_anomaly_info.reason:
        found.append({"split": split, "feature": "(dataset)",
                      "type": anomalies_pb2.AnomalyInfo.Type.Name(reason.type),
                      "description": reason.description})
    return found


def read_anomalies(uri: str, splits: list[str]) -> list[dict]:
    """The described anomalies ExampleValidator wrote under ``uri`` for ``splits``."""
    found = []
    for split in splits:
        parsed = anomalies_pb2.Anomalies()
        with fileio.open(os.path.join(uri, f"Split-{split}", ANOMALIES_FILE), "rb") as f:
            parsed.ParseFromString(f.read())
        found += describe(split, parsed)
    return found


def check(found: list[dict], allowed_types: set[str]) -> None:
    """Raises ``DataAnomalyError`` for any anomaly whose type is not allowed."""
    blocking = [a for a in found if a["type"] not in allowed_types]
    for anomaly in found:
        if anomaly not in blocking:
            absl.logging.warning("Allowed data anomaly: %s", anomaly)
    if blocking:
        lines = "\n".join(f"  split '{a['split']}', feature '{a['feature']}': {a['type']}: "
                          f"{a['description']}" for a in blocking)
        raise DataAnomalyError(
            f"{len(blocking)} data anomal{'y' if len(blocking) == 1 else 'ies'} against the "
            f"schema; stopping before Transform (nothing is trained or pushed):\n{lines}\n"
            "Fix the data, update the schema, or allow these types with --allowed-anomalies.")


def drift_anomalies(current, previous, schema, label_key: str, label_threshold: float,
                    size_keys: list, size_threshold: float) -> anomalies_pb2.Anomalies:
    """TFDV's drift comparison of two statistics protos (thresholds of 0 are off)."""
    import tensorflow_data_validation as tfdv
    contract, schema = schema, schema_pb2.Schema()
    schema.CopyFrom(contract)  # a copy: the comparators are not part of the contract
    for feature in schema.feature:
        if feature.name == label_key and label_threshold > 0:
            # String labels have categorical statistics; int ids (without a schema at
            # statistics time) numeric ones, compared as distributions.
            comparator = feature.drift_comparator
            if feature.type == schema_pb2.BYTES:
                comparator.infinity_norm.threshold = label_threshold
            else:
                comparator.jensen_shannon_divergence.threshold = label_threshold
        elif feature.name in size_keys and size_threshold > 0:
            feature.drift_comparator.jensen_shannon_divergence.threshold = size_threshold
    return tfdv.validate_statistics(current, schema, previous_statistics=previous)


def _train_stats_path(statistics) -> str:
    return os.path.join(statistics.uri, TRAIN_STATISTICS)


@component
def AnomalyGate(
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    statistics: InputArtifact[standard_artifacts.ExampleStatistics],
    schema: InputArtifact[standard_artifacts.Schema],
    previous_statistics: InputArtifact[standard_artifacts.ExampleStatistics] = None,
    allowed_types: Parameter[str] = "",
    drift_config: Parameter[str] = "{}",
) -> None:
    """Fails the run on any anomaly (or drift) of a type not in ``allowed_types``."""
    found = read_anomalies(anomalies.uri,
                           artifact_utils.decode_split_names(anomalies.split_names))
    drift = json.loads(drift_config)
    if drift and previous_statistics is not None and \
            fileio.exists(_train_stats_path(previous_statistics)):
        import tensorflow_data_validation as tfdv
        found += describe("train vs the served model's training data", drift_anomalies(
            *(tfdv.load_stats_binary(_train_stats_path(s)) for s in (statistics,
                                                                     previous_statistics)),
            tfdv.load_schema_text(os.path.join(schema.uri, "schema.pbtxt")), **drift))
    check(found, {t.strip() for t in allowed_types.split(",") if t.strip()})
