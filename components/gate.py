"""The Evaluator's quality gate as a TFMA EvalConfig."""
from __future__ import annotations

import tensorflow_model_analysis as tfma

from modules.features import LABEL_XF, PROBABILITIES, TRANSFORM_SIGNATURE

ACCURACY_METRIC = "sparse_categorical_accuracy"


def eval_config(min_accuracy: float) -> tfma.EvalConfig:
    """Bless the model only if its accuracy on the eval split is at least ``min_accuracy``.

    Labels come through the model's own Transform graph (``transform_features`` signature),
    so int ids and vocabulary-mapped string labels are compared alike.
    """
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", label_key=LABEL_XF,
                                    prediction_key=PROBABILITIES,
                                    preprocessing_function_names=[TRANSFORM_SIGNATURE])],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(
                class_name="SparseCategoricalAccuracy",
                threshold=tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
                    lower_bound={"value": min_accuracy}))),
        ])])
