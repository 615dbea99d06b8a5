"""The Evaluator's quality gate (a TFMA EvalConfig) and reading its results back."""
from __future__ import annotations

import tensorflow_model_analysis as tfma
from google.protobuf import json_format
from tensorflow_model_analysis.proto import config_pb2

from domain.features import LABEL_XF, PROBABILITIES, TRANSFORM_SIGNATURE

from domain.contracts import ACCURACY_METRIC, BASELINE, CANDIDATE, CLASS_METRICS


def eval_config(label_key: str, min_accuracy: float, max_regression: float,
                min_class_recall: float = 0.0) -> tfma.EvalConfig:
    """Bless the candidate only if, on the eval split:

    * its accuracy is at least ``min_accuracy``;
    * it is at most ``max_regression`` (absolute; 0: no regression) less accurate than the
      baseline, a copy of the model being served (``ServedModel``: the ``stable`` label's
      version, else the highest; without one, on the first run, TFX drops this check); with a
      tolerance, also at least the best version pushed on the same data less that tolerance
      (``regression_floor``), so that successive pushes cannot each lose it;
    * with ``min_class_recall`` > 0, every class's recall (the accuracy of its label slice)
      is at least that.

    Labels come through the model's own Transform graph (``transform_features`` signature),
    so int ids and vocabulary-mapped string labels are compared alike. Metrics are sliced by
    the raw label, so per-class results are always computed.
    """
    overall, per_class = tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[label_key])
    # Thresholds per slice: a plain `threshold` would hold every class slice to min_accuracy.
    accuracy = tfma.MetricConfig(class_name="SparseCategoricalAccuracy", per_slice_thresholds=[
        config_pb2.PerSliceMetricThreshold(slicing_specs=[overall], threshold=tfma.MetricThreshold(
            value_threshold=tfma.GenericValueThreshold(lower_bound={"value": min_accuracy}),
            change_threshold=tfma.GenericChangeThreshold(
                direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                absolute={"value": -max_regression})))])
    if min_class_recall > 0:
        accuracy.per_slice_thresholds.append(config_pb2.PerSliceMetricThreshold(
            slicing_specs=[per_class],
            threshold=tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
                lower_bound={"value": min_class_recall}))))
    # One model spec: TFX adds the baseline's copy (named candidate/baseline) when it has one.
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", label_key=LABEL_XF,
                                    prediction_key=PROBABILITIES,
                                    preprocessing_function_names=[TRANSFORM_SIGNATURE])],
        slicing_specs=[overall, per_class],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"), accuracy,
            tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot")])])


def tolerance(eval_config_json: str) -> float:
    """The regression ``eval_config`` allows against the served model (``max_regression``)."""
    config = json_format.Parse(eval_config_json, tfma.EvalConfig())
    return max([-t.threshold.change_threshold.absolute.value
                for spec in config.metrics_specs for m in spec.metrics
                if m.class_name == "SparseCategoricalAccuracy"
                for t in m.per_slice_thresholds if t.threshold.HasField("change_threshold")],
               default=0.0)


def regression_floor(manifest: list[dict], data_fingerprint: str | None,
                     max_regression: float) -> tuple[float, str] | None:
    """With a tolerance, the accuracy a candidate needs against the best version ever pushed
    on the same data (the serving dir's push records: equal ``data_fingerprint``, so the same
    eval split): that version's accuracy less ``max_regression``, and why. None without a
    tolerance, a fingerprint or such a version."""
    same = [e for e in manifest if e.get("action", "push") == "push" and data_fingerprint
            and e.get("data_fingerprint") == data_fingerprint and e.get("accuracy") is not None]
    if not max_regression or not same:
        return None
    best = max(same, key=lambda e: e["accuracy"])
    return (best["accuracy"] - max_regression,
            f"best version pushed on this data: version {best['version']} at "
            f"{best['accuracy']:.4f}, less the tolerance {max_regression:g}")


def accuracy_bound(min_accuracy: float, floor: tuple[float, str] | None) -> tuple[float, str]:
    """The overall accuracy bound the gate applies, and where it comes from."""
    if floor and floor[0] > min_accuracy:
        return floor
    return min_accuracy, "min_accuracy"


def with_min_accuracy(eval_config_json: str, min_accuracy: float) -> str:
    """``eval_config`` (JSON) with the overall accuracy bound set to ``min_accuracy``: the
    bound is a run-time parameter, the rest of the gate is compiled in."""
    if min_accuracy < 0:  # above 1 is allowed: a gate nothing passes
        raise ValueError(f"run-time parameter min_accuracy must be >= 0, got {min_accuracy}")
    config = json_format.Parse(eval_config_json, tfma.EvalConfig())
    for spec in config.metrics_specs:
        for metric in spec.metrics:
            for per_slice in metric.per_slice_thresholds:
                if list(per_slice.slicing_specs) == [tfma.SlicingSpec()] and \
                        metric.class_name == "SparseCategoricalAccuracy":
                    per_slice.threshold.value_threshold.lower_bound.value = min_accuracy
    return json_format.MessageToJson(config, sort_keys=True)


def sliced_metric(evaluation_uri: str, name: str = ACCURACY_METRIC,
                  model: str = CANDIDATE) -> dict[tuple, float]:
    """``{slice key: value}`` of one metric of one model; ``()`` is the overall slice."""
    names = {model, ""} if model == CANDIDATE else {model}  # a lone model has no name
    values = {}
    for per_slice in tfma.load_metrics(evaluation_uri):
        slice_key = tuple((k.column, getattr(k, k.WhichOneof("kind")))
                          for k in per_slice.slice_key.single_slice_keys)
        for entry in per_slice.metric_keys_and_values:
            key = entry.key
            if (key.name == name and key.model_name in names and not key.is_diff
                    and not key.HasField("sub_key")):
                values[slice_key] = entry.value.double_value.value
    return values


def overall_metric(evaluation_uri: str, name: str = ACCURACY_METRIC,
                   model: str = CANDIDATE) -> float:
    """A metric of the overall slice from a TFMA evaluation output."""
    values = sliced_metric(evaluation_uri, name, model)
    if () not in values:
        raise KeyError(f"no overall {name} of the {model} model in {evaluation_uri}")
    return values[()]


def confusion_matrix(evaluation_uri: str, model: str = CANDIDATE) -> dict[tuple[int, int], float]:
    """``{(actual, predicted): examples}`` of the overall slice for the candidate or the
    ``BASELINE``; empty when that model was not evaluated."""
    for plots in tfma.load_plots(evaluation_uri):
        if plots.slice_key.single_slice_keys:
            continue
        for entry in plots.plot_keys_and_values:
            matrices = entry.value.multi_class_confusion_matrix_at_thresholds.matrices
            if matrices and (entry.key.model_name == BASELINE) == (model == BASELINE):
                return {(e.actual_class_id, e.predicted_class_id): e.num_weighted_examples
                        for e in matrices[0].entries}
    return {}


def class_figures(matrix: dict[tuple[int, int], float], i: int,
                  classes: int) -> tuple[float | None, float | None, float | None]:
    """Precision, recall and F1 of class ``i`` from a confusion matrix (None: undefined)."""
    hit = matrix.get((i, i), 0)
    actual = sum(matrix.get((i, j), 0) for j in range(classes))
    predicted = sum(matrix.get((j, i), 0) for j in range(classes))
    precision = hit / predicted if predicted else None
    recall = hit / actual if actual else None
    f1 = (2 * precision * recall / (precision + recall) if precision and recall else
          (0.0 if precision is not None and recall is not None else None))
    return precision, recall, f1


def class_rows(matrix: dict[tuple[int, int], float], names: list[str]) -> list[dict]:
    """``[{class, support, precision, recall, f1}]`` per class name, from a confusion matrix."""
    return [dict(zip(("precision", "recall", "f1"), class_figures(matrix, i, len(names))),
                 **{"class": name, "support": sum(matrix.get((i, j), 0)
                                                  for j in range(len(names)))})
            for i, name in enumerate(names)]


def class_metrics(evaluation_uri: str, names: list[str]) -> dict:
    """``{model: class_rows}`` for the candidate and (when compared) the baseline: what the
    Evaluator records beside its evaluation (``CLASS_METRICS``) for the model card."""
    matrices = {model: confusion_matrix(evaluation_uri, model) for model in (CANDIDATE, BASELINE)}
    return {model: class_rows(matrix, names) for model, matrix in matrices.items() if matrix}
