"""VersionedPusher: push blessed models only, atomically, as TF Serving integer versions.

Replaces TFX's Pusher for a filesystem destination (see ``domain.registry``): strictly
increasing versions, atomic appearance, retention of the newest N, and a manifest entry per
push (version, source model, metrics, blessing, data spans, time), also recorded on the
PushedModel artifact in MLMD. A model is pushed at most once: a rerun that re-blesses it
(against itself as baseline) pushes nothing, and a rollback away from it sticks until a new
model is trained. The push is a compare-and-set: a model gated against a version that is no
longer served (another run pushed, an operator rolled back or moved the labels meanwhile) is
not pushed, and the run says so. (No ``from __future__ import annotations``: TFX reads the annotations at run
time.)
"""
import json
import os
import tempfile

from tfx.components.evaluator import constants as evaluator_constants
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import standard_artifacts
from tfx.utils import io_utils, path_utils

from domain import class_map, registry
from domain.versions import entry_of
from domain.contracts import NO_NEW_DATA, PushResult, store_uri
from components.gate import overall_metric
from components.image_validator import FINGERPRINT
from components.live_inputs import (SERVED_VERSION, SOURCE_MODEL_ID, STATISTICS_PATH,
                                    TRAIN_STATISTICS)
from domain.features import TRAINING_FILE


BASELINE_ID = evaluator_constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY


def _spans(examples) -> list[int]:
    return ([examples.get_int_custom_property("span")] if examples.has_custom_property("span")
            else [])


def _training(model_dir: str):
    path = os.path.join(model_dir, TRAINING_FILE)
    return json.loads(io_utils.read_string_file(path)) if fileio.exists(path) else None


def _why_not(model, examples, manifest: list[dict], base: str, classes: list[str],
             allow_new_classes: bool) -> str:
    """Why ``model`` (trained on ``classes``) is not pushed whatever its blessing, or ""
    (called again under the lock)."""
    earlier = [e["version"] for e in manifest
               if e.get("model_uri") == store_uri(model) and e.get("action") == "push"]
    if earlier:
        return f"already pushed as version {earlier[0]}"
    served = entry_of(manifest, registry.served_version(base))
    mismatch = class_map.disagreement(classes, (served or {}).get("class_names"),
                                      (served or {}).get("version", 0), allow_new_classes)
    if mismatch:
        return mismatch
    # A warm-started retrain on the data and settings of the served version is no news.
    if served and served.get("examples_uri") == store_uri(examples) and \
            served.get("retained") and _training(path_utils.serving_model_path(model.uri)) == \
            _training(os.path.join(base, str(served["version"]))):
        return (f"{NO_NEW_DATA}: served version {served['version']} was trained on the same "
                "examples with the same settings")
    return ""


def _pushed_by(manifest: list[dict], pushed_model_uri: str) -> dict | None:
    """The push of the task whose output is ``pushed_model_uri``: a retry of a task killed
    after it pushed finds its own push here (the output URI is the same on every attempt)."""
    return next((e for e in manifest if e.get("action") == "push"
                 and e.get("pushed_model_uri") == pushed_model_uri), None)


@component
def VersionedPusher(
    model: InputArtifact[standard_artifacts.Model],
    model_blessing: InputArtifact[standard_artifacts.ModelBlessing],
    evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
    examples: InputArtifact[standard_artifacts.Examples],
    baseline_model: InputArtifact[standard_artifacts.Model],
    statistics: InputArtifact[standard_artifacts.ExampleStatistics],
    pushed_model: OutputArtifact[standard_artifacts.PushedModel],
    base_directory: Parameter[str],
    keep_versions: Parameter[int] = 5,
    definition: Parameter[str] = "",
    class_names: Parameter[str] = "[]",
    allow_new_classes: Parameter[int] = 0,
) -> None:
    """Publishes ``model`` under ``base_directory`` if ``model_blessing`` blessed it, with
    the training data's statistics (the next runs' drift baseline) in ``assets.extra``;
    ``definition`` (the config's ``definition_sha256``) and ``class_names`` (JSON: the
    model's classes in id order) go into the push record. A model whose classes disagree
    with the served version's is not pushed (``allow_new_classes``: unless it only adds
    classes)."""
    classes = json.loads(class_names)

    def why_not(manifest: list[dict]) -> str:
        return _why_not(model, examples, manifest, base_directory, classes,
                        bool(allow_new_classes))

    manifest = registry.read_manifest(base_directory)
    own = _pushed_by(manifest, store_uri(pushed_model))
    reason = "" if own else why_not(manifest) or (
        "" if model_blessing.get_int_custom_property("blessed") else "not blessed")
    if reason:
        PushResult(pushed=False, reason=reason).write(pushed_model)
        return
    gated_against = baseline_model.get_int_custom_property(SERVED_VERSION)
    accuracy = overall_metric(evaluation.uri)
    record = {  # the artifacts by their store URIs: the pod-local copies are gone after it
        "action": "push", "model_uri": store_uri(model), "model_id": model.id,
        "blessing_id": model_blessing.id, "evaluation_uri": store_uri(evaluation),
        "accuracy": accuracy, "spans": _spans(examples), "examples_uri": store_uri(examples),
        "data_fingerprint": (examples.get_string_custom_property(FINGERPRINT)
                             if examples.has_custom_property(FINGERPRINT) else None),
        "baseline_version": gated_against or None,
        "baseline_model_id": (baseline_model.get_int_custom_property(SOURCE_MODEL_ID)
                              if model_blessing.has_custom_property(BASELINE_ID) else None),
        "definition": definition, "class_names": classes,
        "pushed_model_uri": store_uri(pushed_model),
    }
    if own:  # this task again (a retried pod): its push, once
        PushResult(pushed=True, version=own["version"],
                   destination=os.path.join(base_directory, str(own["version"])),
                   record=record, accuracy=accuracy).write(pushed_model)
        return
    with tempfile.TemporaryDirectory() as tmp:  # the pipeline root may be an object store
        source = os.path.join(tmp, "model")
        io_utils.copy_dir(path_utils.serving_model_path(model.uri), source)
        io_utils.copy_file(os.path.join(statistics.uri, TRAIN_STATISTICS),
                           os.path.join(source, STATISTICS_PATH, TRAIN_STATISTICS))
        try:  # a compare-and-set under the serving dir's lock: checked again there
            version = registry.publish(
                source, base_directory, record, keep_versions, expected_served=gated_against,
                refuse=why_not)
        except registry.ServedChanged as err:
            PushResult(pushed=False, reason=str(err)).write(pushed_model)
            return
    destination = os.path.join(base_directory, str(version))
    PushResult(pushed=True, version=version, destination=destination, record=record,
               accuracy=accuracy).write(pushed_model)
