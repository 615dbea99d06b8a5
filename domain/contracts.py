"""Typed contracts between components and the tools that read their results.

``PushResult`` is what VersionedPusher records on its PushedModel artifact (MLMD custom
properties), read back by ``pipeline.outcome`` and ``ops.lineage``; ``RunOutcome`` is a run's
result as the runners, ``ops.retrain``, the run report and the benchmarks use it.
"""
from __future__ import annotations

import dataclasses
import json

NO_NEW_DATA = "no new data"  # the start of a push's reason when a rerun brought nothing new
# The Evaluator's names: its accuracy metric, its two models, and the per-class figures file
# it writes beside its output (read by the outcome, the report and the model card).
ACCURACY_METRIC = "sparse_categorical_accuracy"
CANDIDATE, BASELINE = "candidate", "baseline"
CLASS_METRICS = "class_metrics.json"
# The custom property on an artifact the KFP launcher staged to a pod-local path (``uri``)
# naming its object-store URI (minio://, s3://): set by pipeline.kfp_entrypoint for the task
# only, never written back to MLMD.
STORE_URI = "store_uri"


def store_uri(artifact) -> str:
    """Where ``artifact`` (a TFX artifact) lives for anyone outside this task: its
    ``STORE_URI`` where the launcher staged it, else its ``uri``."""
    return (artifact.get_string_custom_property(STORE_URI)
            if artifact.has_custom_property(STORE_URI) else artifact.uri)


@dataclasses.dataclass(frozen=True)
class PushResult:
    """Whether a model was pushed: as which version, where, with which record; else why not."""

    pushed: bool
    version: int | None = None
    destination: str | None = None
    record: dict | None = None
    accuracy: float | None = None
    reason: str | None = None

    def write(self, artifact) -> None:
        """Sets the custom properties of a PushedModel artifact."""
        artifact.set_int_custom_property("pushed", int(self.pushed))
        if not self.pushed:
            artifact.set_string_custom_property("reason", self.reason or "")
            return
        artifact.set_int_custom_property("pushed_version", self.version)
        artifact.set_string_custom_property("pushed_destination", self.destination)
        artifact.set_string_custom_property("push_record", json.dumps(self.record,
                                                                      sort_keys=True))
        artifact.set_float_custom_property("accuracy", self.accuracy)

    @classmethod
    def read(cls, properties) -> "PushResult":
        """From an MLMD artifact's ``custom_properties``."""
        if not properties["pushed"].int_value:
            return cls(pushed=False, reason=properties["reason"].string_value)
        return cls(pushed=True, version=properties["pushed_version"].int_value,
                   destination=properties["pushed_destination"].string_value,
                   record=json.loads(properties["push_record"].string_value),
                   accuracy=properties["accuracy"].double_value)


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """A run's result: the evaluated accuracy (and the served baseline's), the gate decision,
    the push or why there was none, the warm start and the run report."""

    cached: bool  # every execution of the run was a cache hit
    accuracy: float
    baseline_accuracy: float | None  # None: nothing was served, only the absolute bound
    blessed: bool
    pushed: bool
    pushed_path: str | None
    pushed_version: int | None
    reason: str | None  # why nothing was pushed
    baseline_version: int | None
    warm_start: str | None  # how the warm start went; None when it was off
    report: str | None = None  # the HTML run report
    accuracy_bound: float | None = None  # the absolute bound the gate applied
    bound_reason: str | None = None  # where it came from (min_accuracy or a tolerance floor)
    weakest_class: str | None = None  # the candidate's class of lowest recall, by name
    weakest_recall: float | None = None
    input_choice: str | None = None  # the model's input and classes, and where they came from
    tflite: str | None = None  # the TFLite model's figures (``tflite_line``); None: none made
