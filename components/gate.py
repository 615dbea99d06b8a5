"""The Evaluator's quality gate as a TFMA EvalConfig."""
from __future__ import annotations

import tensorflow_model_analysis as tfma

from modules.features import PROBABILITIES

ACCURACY_METRIC = "sparse_categorical_accuracy"


def eval_config(label_key: str, min_accuracy: float) -> tfma.EvalConfig:
    """Bless the model only if its accuracy on the eval split is at least ``min_accuracy``."""
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", label_key=label_key,
                                    prediction_key=PROBABILITIES)],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(
                class_name="SparseCategoricalAccuracy",
                threshold=tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
                    lower_bound={"value": min_accuracy}))),
        ])])
