"""VersionedPusher: push blessed models only, atomically, as TF Serving integer versions.

Replaces TFX's Pusher for a filesystem destination (see ``components.serving_dir``): strictly
increasing versions, atomic appearance, retention of the newest N, and a manifest entry per
push (version, source model, metrics, blessing, data spans, time), also recorded on the
PushedModel artifact in MLMD. A model is pushed at most once: a rerun that re-blesses it
(against itself as baseline) pushes nothing, and a rollback away from it sticks until a new
model is trained. (No ``from __future__ import annotations``: TFX reads the annotations at run
time.)
"""
import json
import os

from tfx.components.evaluator import constants as evaluator_constants
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from components import serving_dir
from components.gate import overall_metric


BASELINE_ID = evaluator_constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY


def _spans(examples) -> list[int]:
    return ([examples.get_int_custom_property("span")] if examples.has_custom_property("span")
            else [])


@component
def VersionedPusher(
    model: InputArtifact[standard_artifacts.Model],
    model_blessing: InputArtifact[standard_artifacts.ModelBlessing],
    evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
    examples: InputArtifact[standard_artifacts.Examples],
    pushed_model: OutputArtifact[standard_artifacts.PushedModel],
    base_directory: Parameter[str],
    keep_versions: Parameter[int] = 5,
) -> None:
    """Publishes ``model`` under ``base_directory`` if ``model_blessing`` blessed it."""
    blessed = bool(model_blessing.get_int_custom_property("blessed"))
    earlier = [e["version"] for e in serving_dir.read_manifest(base_directory)
               if e.get("model_uri") == model.uri and e.get("action") == "push"]
    if not blessed or earlier:
        pushed_model.set_int_custom_property("pushed", 0)
        pushed_model.set_string_custom_property(
            "reason", "not blessed" if not blessed else f"already pushed as version {earlier[0]}")
        return
    accuracy = overall_metric(evaluation.uri)
    record = {
        "action": "push", "model_uri": model.uri, "model_id": model.id,
        "blessing_id": model_blessing.id, "evaluation_uri": evaluation.uri,
        "accuracy": accuracy, "spans": _spans(examples),
        "baseline_model_id": (model_blessing.get_int_custom_property(BASELINE_ID)
                              if model_blessing.has_custom_property(BASELINE_ID) else None),
    }
    version = serving_dir.publish(path_utils.serving_model_path(model.uri), base_directory,
                                  record, keep_versions)
    destination = os.path.join(base_directory, str(version))
    pushed_model.set_int_custom_property("pushed", 1)
    pushed_model.set_int_custom_property("pushed_version", version)
    pushed_model.set_string_custom_property("pushed_destination", destination)
    pushed_model.set_string_custom_property("push_record", json.dumps(record, sort_keys=True))
    pushed_model.set_float_custom_property("accuracy", accuracy)
