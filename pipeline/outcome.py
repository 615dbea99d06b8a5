"""What the latest run produced, read back from MLMD and its artifacts."""
from __future__ import annotations

import json
import os

from ml_metadata.proto import metadata_store_pb2

from domain.contracts import RunOutcome
from domain.features import RESULT_FILE, WARM_START_DIR
from domain.exported import TFLITE_SUMMARY, tflite_line
from pipeline.config import PipelineConfig
from domain.mlmd_queries import (latest_artifact, metadata_store, run_outputs, run_push,
                                 value_of)


def latest_outcome(config: PipelineConfig, since_execution_id: int = 0) -> RunOutcome:
    """The evaluation and push of the run after ``since_execution_id``: accuracy (and the
    served baseline's version and accuracy, if something was served), how the warm start went
    (if on), the TFLite model's figures (if one was made), blessed, pushed,
    pushed_path/pushed_version, or why nothing was pushed, and whether every execution after
    ``since_execution_id`` was a cache hit (no new data, no new config)."""
    from components.gate import BASELINE, overall_metric  # TFMA: only once a run is over
    from components.live_inputs import SERVED_VERSION
    store = metadata_store(config.metadata_path)
    outputs = run_outputs(store, since_execution_id)
    evaluation, blessing = (latest_artifact(store, t, among=outputs)
                            for t in ("ModelEvaluation", "ModelBlessing"))
    executions = [e for e in store.get_executions() if e.id > since_execution_id]
    push = run_push(store, executions)  # a cached pusher replayed an earlier run's push
    if evaluation is None or blessing is None or push is None:
        raise RuntimeError(f"no completed run recorded in {config.metadata_path}")
    has_baseline = "baseline_model_id" in blessing.custom_properties
    served = latest_artifact(store, "Model", "ServedModel", outputs)
    trained = latest_artifact(store, "Model", "Trainer", outputs)
    cached = {e.last_known_state for e in executions} == {metadata_store_pb2.Execution.CACHED}
    return RunOutcome(
        cached=cached,
        accuracy=overall_metric(evaluation.uri),
        baseline_accuracy=overall_metric(evaluation.uri, model=BASELINE) if has_baseline
        else None,
        blessed=bool(blessing.custom_properties["blessed"].int_value),
        pushed=push.pushed, pushed_path=push.destination, pushed_version=push.version,
        reason=push.reason,
        baseline_version=served.custom_properties[SERVED_VERSION].int_value
        if has_baseline and served is not None else None,
        warm_start=_warm_start(trained), tflite=_tflite(trained),
        accuracy_bound=_property(evaluation, "accuracy_bound"),
        bound_reason=_property(evaluation, "accuracy_bound_reason"),
        **_weakest_class(evaluation.uri))


def class_recalls(evaluation_uri: str) -> dict[str, float]:
    """The candidate's recall per class name, from the per-class figures the Evaluator wrote
    beside its evaluation (``CLASS_METRICS``); empty when there are none."""
    from tfx.dsl.io import fileio
    from tfx.utils import io_utils

    from domain.contracts import CANDIDATE, CLASS_METRICS
    path = os.path.join(evaluation_uri, CLASS_METRICS)
    if not fileio.exists(path):
        return {}
    return {r["class"]: r["recall"] for r in json.loads(io_utils.read_string_file(path)).get(
        CANDIDATE, []) if r.get("recall") is not None}


def _weakest_class(evaluation_uri: str) -> dict:
    """The candidate's class of lowest recall (``weakest_class``, ``weakest_recall``); empty
    when there are no per-class figures."""
    recalls = class_recalls(evaluation_uri)
    weakest = min(recalls, key=recalls.get, default=None)
    return {} if weakest is None else {"weakest_class": weakest,
                                       "weakest_recall": recalls[weakest]}


def _property(artifact, key: str):
    """A custom property's value (None when absent)."""
    return value_of(artifact.custom_properties[key]) if key in artifact.custom_properties \
        else None


def _warm_start(model) -> str | None:
    """How the trained model's warm start went (None when it was off)."""
    found = trained_file(model, os.path.join(WARM_START_DIR, RESULT_FILE))
    return found and found["reason"]


def _tflite(model) -> str | None:
    """The trained model's TFLite figures in one line (None when it has none)."""
    found = trained_file(model, TFLITE_SUMMARY)
    return found and tflite_line(found)


def trained_file(model, name: str) -> dict | None:
    """A JSON file beside the trained ``model``'s SavedModel (None when absent)."""
    from tfx.dsl.io import fileio
    from tfx.utils import io_utils, path_utils
    path = os.path.join(path_utils.serving_model_path(model.uri), name)
    return json.loads(io_utils.read_string_file(path)) if fileio.exists(path) else None
