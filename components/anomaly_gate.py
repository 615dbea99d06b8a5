"""AnomalyGate: stop the run when ExampleValidator found anomalies against the schema.

Runs between ExampleValidator and Transform (Transform waits for it), so data that breaks the
schema is neither trained on nor pushed. The error lists each anomaly: split, feature, type,
description. ``allowed_types`` (comma-separated anomaly type names, e.g.
``SCHEMA_NEW_COLUMN``) only log a warning. (No ``from __future__ import annotations``: TFX
reads the annotations at run time.)
"""
import os

import absl.logging
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts

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


@component
def AnomalyGate(
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    allowed_types: Parameter[str] = "",
) -> None:
    """Fails the run on any anomaly of a type not in ``allowed_types``."""
    found = []
    for split in artifact_utils.decode_split_names(anomalies.split_names):
        parsed = anomalies_pb2.Anomalies()
        path = os.path.join(artifact_utils.get_split_uri([anomalies], split), ANOMALIES_FILE)
        with open(path, "rb") as f:
            parsed.ParseFromString(f.read())
        found += describe(split, parsed)
    check(found, {t.strip() for t in allowed_types.split(",") if t.strip()})
