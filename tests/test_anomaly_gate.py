"""AnomalyGate's checks: readable anomaly lists, allowed types, drift between runs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tensorflow_data_validation as tfdv

from components.anomaly_gate import DataAnomalyError, check, describe, drift_anomalies


def _stats(labels, heights):
    return tfdv.generate_statistics_from_dataframe(pd.DataFrame({
        "label": labels, "height": heights, "width": np.full(len(labels), 32)}))


@pytest.fixture
def baseline():
    rng = np.random.default_rng(0)
    previous = _stats(rng.integers(0, 5, 2000), rng.normal(100, 10, 2000).round())
    schema = tfdv.infer_schema(previous)
    return previous, schema, rng


def _drift(current, previous, schema, label=0.0, size=0.0):
    return describe("train", drift_anomalies(current, previous, schema, "label", label,
                                             ["height", "width"], size))


def test_string_label_drift_uses_the_l_infinity_distance():
    rng = np.random.default_rng(1)
    names = np.array(["cat", "dog", "owl"])
    previous = tfdv.generate_statistics_from_dataframe(pd.DataFrame(
        {"label": names[rng.integers(0, 3, 900)]}))
    current = tfdv.generate_statistics_from_dataframe(pd.DataFrame(
        {"label": np.where(rng.random(900) < 0.7, "cat", names[rng.integers(0, 3, 900)])}))
    found = describe("train", drift_anomalies(current, previous, tfdv.infer_schema(previous),
                                              "label", 0.2, [], 0.0))
    assert [(a["feature"], a["type"]) for a in found] == [("label", "COMPARATOR_L_INFTY_HIGH")]


def test_label_and_size_drift_are_found_only_above_thresholds(baseline):
    previous, schema, rng = baseline
    similar = _stats(rng.integers(0, 5, 2000), rng.normal(100, 10, 2000).round())
    assert _drift(similar, previous, schema, label=0.1, size=0.1) == []
    skewed = _stats(np.where(rng.random(2000) < 0.6, 0, rng.integers(0, 5, 2000)),
                    rng.normal(300, 10, 2000).round())
    found = {(a["feature"], a["type"]) for a in _drift(skewed, previous, schema, 0.1, 0.1)}
    assert found == {("label", "COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH"),
                     ("height", "COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH")}
    assert _drift(skewed, previous, schema) == []  # thresholds 0: off
    assert not tfdv.get_feature(schema, "label").HasField("drift_comparator")


def test_check_lists_blocking_anomalies_and_lets_allowed_types_pass():
    found = [{"split": "eval", "feature": "camera", "type": "SCHEMA_NEW_COLUMN",
              "description": "New column"},
             {"split": "train", "feature": "label", "type": "INT_TYPE_BIG_INT",
              "description": "Values above 9"}]
    with pytest.raises(DataAnomalyError) as error:
        check(found, set())
    assert "2 data anomalies" in str(error.value)
    assert "split 'train', feature 'label': INT_TYPE_BIG_INT: Values above 9" in str(error.value)
    with pytest.raises(DataAnomalyError, match="1 data anomaly "):
        check(found, {"SCHEMA_NEW_COLUMN"})
    check(found, {"SCHEMA_NEW_COLUMN", "INT_TYPE_BIG_INT"})
