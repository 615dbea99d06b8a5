"""Honest evaluation: the data that chooses a model is not the data that judges it, and a
rare class is not left behind (issue 25)."""
from __future__ import annotations

import json
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from google.protobuf import json_format

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))

from domain import registry  # noqa: E402
from components.gate import (CLASS_METRICS, accuracy_bound, class_figures,  # noqa: E402
                             class_rows, eval_config, regression_floor, tolerance,
                             with_min_accuracy)
from make_shapes import write_shapes  # noqa: E402
from domain.features import IMAGE_XF, ImageSpec  # noqa: E402
from modules.model import build_model  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402
from pipeline.report import rare_classes  # noqa: E402
from serving.model_card import model_card, report_of  # noqa: E402
from modules.budget import MIN_ROUND_STEPS  # noqa: E402
from modules.data import FIT, VALIDATION, Inputs, carve, class_weight  # noqa: E402
from modules.training import fit_arguments  # noqa: E402


def _shapes(tmp_path, per_class: int, classes: int = 3, seed: int = 0):
    paths = write_shapes(str(tmp_path), per_class=per_class, classes=classes, seed=seed)
    names = sorted({os.path.basename(os.path.dirname(p)) for p in paths})
    labels = np.array([names.index(os.path.basename(os.path.dirname(p))) for p in paths])
    return [open(p, "rb").read() for p in paths], labels


def _members(images, labels, part: str, percent: int) -> list:
    dataset = tf.data.Dataset.from_tensor_slices(({IMAGE_XF: images}, labels))
    return [f[IMAGE_XF].numpy() for f, _ in carve(dataset, part, percent)]


@pytest.mark.parametrize("raw", [False, True])
def test_validation_is_carved_from_the_train_split_by_content(tmp_path, raw):
    """Disjoint, complete, near the asked share, and the same image always lands on the
    same side whatever the order it is read in (encoded bytes or raw pixels)."""
    images, labels = _shapes(tmp_path, 40)
    if raw:
        images = list(np.random.default_rng(0).random((120, 6, 6, 1)).astype("float32"))
    key = (lambda x: x.tobytes()) if raw else bytes
    validation = {key(x) for x in _members(images, labels, VALIDATION, 20)}
    fit = {key(x) for x in _members(images, labels, FIT, 20)}
    assert not validation & fit and validation | fit == {key(x) for x in images}
    assert 0.1 < len(validation) / len(images) < 0.3
    reordered = {key(x) for x in _members(images[::-1], labels[::-1], VALIDATION, 20)}
    assert reordered == validation
    with pytest.raises(ValueError, match="part must be"):
        carve(tf.data.Dataset.from_tensor_slices(({IMAGE_XF: images}, labels)), "eval", 20)


def test_class_weights_balance_the_loss_when_asked_or_when_classes_are_far_apart():
    assert class_weight([100, 100, 90], "auto") is None
    assert class_weight([100, 100, 19], "auto") == class_weight([100, 100, 19], "balanced")
    weights = class_weight([100, 100, 20], "balanced")
    # Each class weighs the same in the loss: weight x count is equal.
    assert [round(w * c) for w, c in zip(weights.values(), (100, 100, 20))] == [73] * 3
    assert class_weight([100, 0, 10], "balanced")[1] == 1.0
    assert class_weight([100, 100, 1], "none") is None
    with pytest.raises(ValueError, match="class_weights must be one of"):
        class_weight([1, 2], "inverse")


def _bars(counts: list[int], seed: int):
    """8x8 noisy images: a faint horizontal bar (class 0), a faint vertical bar (1), a bright
    dot on the diagonal (2). The noise makes the classes overlap, so the loss's class priors
    decide the ambiguous images."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    images = rng.random((len(labels), 8, 8, 1))
    for image, label, at in zip(images, labels, rng.integers(0, 8, len(labels))):
        if label == 2:
            image[at, at] += 1.5
        else:
            (image[at] if label == 0 else image[:, at])[:] += 0.5
    return images.astype("float32"), labels


def test_balanced_weights_raise_the_recall_of_a_rare_class():
    """One rare class (8 of 208 training images): unweighted, the model almost never predicts
    it; with the weights ``auto`` picks here, its recall on balanced held-out data rises.
    (make_shapes' photo-like shapes need minutes of training to be learnt at all here.)"""
    images, labels = _bars([100, 100, 8], seed=0)
    held_out, held_out_labels = _bars([50, 50, 50], seed=1)
    counts = np.bincount(labels).tolist()
    weights = class_weight(counts, "auto")
    assert weights is not None and weights[2] > 8 * weights[0]

    def rare_recall(class_weights) -> float:
        keras.utils.set_random_seed(0)
        model = build_model(ImageSpec("image", "label", 8, 8, 1, 3), augmentation=(), width=16,
                            dropout=0.0)
        model.fit(images, labels, batch_size=32, epochs=10, verbose=0,
                  class_weight=class_weights)
        predicted = model.predict(held_out, verbose=0).argmax(axis=1)
        return float(np.mean(predicted[held_out_labels == 2] == 2))

    unweighted, weighted = rare_recall(None), rare_recall(weights)
    assert weighted >= unweighted + 0.1, (unweighted, weighted)


def test_fit_and_the_tuner_choose_on_the_validation_part_with_the_class_weights():
    """``fit_arguments`` (the Trainer's fit and the Tuner's trials): the validation part
    carved from the train split, never the eval split, and the loss's class weights."""
    fit, validation = tf.data.Dataset.range(3), tf.data.Dataset.range(2)
    inputs = Inputs(None, {FIT: [90, 10], VALIDATION: [9, 1]}, 200, {0: 0.6, 1: 5.0}, fit,
                    validation, 1)
    arguments = fit_arguments(inputs)
    assert arguments["x"] is fit and arguments["validation_data"] is validation
    assert arguments["epochs"] * arguments["steps_per_epoch"] <= 200 and (
        arguments["steps_per_epoch"] == MIN_ROUND_STEPS)
    assert arguments["class_weight"] == {0: 0.6, 1: 5.0} and inputs.examples == 110


def _bound_in(config_json: str) -> float:
    config = json_format.Parse(config_json, tfma.EvalConfig())
    return next(t.threshold.value_threshold.lower_bound.value
                for m in config.metrics_specs[0].metrics for t in m.per_slice_thresholds
                if list(t.slicing_specs) == [tfma.SlicingSpec()])


def test_the_gate_defaults_to_no_regression():
    config = json_format.MessageToJson(eval_config("label", 0.9, PipelineConfig().max_regression))
    assert PipelineConfig().max_regression == 0.0 and tolerance(config) == 0.0


def test_a_tolerance_cannot_compound_over_pushes_on_the_same_data(tmp_path):
    """Each candidate is ``tolerance`` below the served model, which the check against the
    served model alone would bless every time; measured against the best version pushed on
    the same data (the serving dir's push records), the second such step is refused."""
    base, model = str(tmp_path / "serving" / "m"), tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"x")
    config = json_format.MessageToJson(eval_config("label", 0.5, 0.01))
    served, blessed = 0.95, []
    registry.publish(str(model), base, {"action": "push", "accuracy": served,
                                           "data_fingerprint": "span-1"}, keep=5)
    for _ in range(4):
        candidate = served - tolerance(config)  # within tolerance of the served model
        bound, reason = accuracy_bound(0.5, regression_floor(
            registry.read_manifest(base), "span-1", tolerance(config)))
        if candidate < bound - 1e-9:
            break
        blessed.append(candidate)
        registry.publish(str(model), base, {"action": "push", "accuracy": candidate,
                                               "data_fingerprint": "span-1"}, keep=5)
        served = candidate
    assert blessed == [pytest.approx(0.94)]
    assert bound == pytest.approx(0.94) and "version 1 at 0.9500" in reason
    assert _bound_in(with_min_accuracy(config, bound)) == pytest.approx(0.94)
    # Other data (another span: another eval split) is not compared; nor without a tolerance.
    assert regression_floor(registry.read_manifest(base), "span-2", 0.01) is None
    assert regression_floor(registry.read_manifest(base), "span-1", 0.0) is None
    assert accuracy_bound(0.97, (0.94, "best")) == (0.97, "min_accuracy")


def test_per_class_figures_and_rare_classes_from_the_confusion_matrix():
    # actual x predicted: 8 circles (6 right), 10 squares (all right), 2 triangles (1 right)
    matrix = {(0, 0): 6, (0, 1): 2, (1, 1): 10, (2, 2): 1, (2, 0): 1}
    precision, recall, f1 = class_figures(matrix, 0, 3)
    assert (precision, recall) == (6 / 7, 6 / 8) and f1 == pytest.approx(0.8)
    assert class_figures(matrix, 1, 3)[:2] == (10 / 12, 1.0)
    assert class_figures({}, 2, 3) == (None, None, None)
    assert class_figures({(0, 1): 3}, 0, 2) == (None, 0.0, None)
    assert rare_classes([8, 10, 2]) == [2] and rare_classes([5, 5, 4]) == []


def test_model_card_shows_each_label_with_its_classes_figures_data_and_report(tmp_path):
    """Two pushed versions (stable 1, canary 2) from one pipeline root: each section names
    its classes and figures, and the run report written after its push is linked."""
    root, base = tmp_path / "root", str(tmp_path / "serving" / "shapes")
    for version, accuracy in ((1, 0.91), (2, 0.93)):
        model, evaluation = tmp_path / f"model{version}", root / "Evaluator" / "evaluation" / \
            str(version)
        (model / "assets.extra").mkdir(parents=True)
        (model / "assets.extra" / "training.json").write_text(json.dumps(
            {"class_names": ["circle", "square"]}))
        evaluation.mkdir(parents=True)
        if version == 2:
            (evaluation / CLASS_METRICS).write_text(json.dumps({"candidate": class_rows(
                {(0, 0): 9, (0, 1): 1, (1, 1): 10}, ["circle", "square"])}))
        registry.publish(str(model), base, {
            "action": "push", "accuracy": accuracy, "evaluation_uri": str(evaluation),
            "spans": [version], "data_fingerprint": f"fp{version}",
            "baseline_version": version - 1 or None}, keep=5)
    (root / "reports").mkdir()
    (root / "reports" / "run-29990101T000000.html").write_text("<h2>Decision</h2>")
    card = model_card(base, {"stable": 1, "canary": 2})
    stable, canary = card.split("<h2>canary: version 2</h2>")
    assert "<h2>stable: version 1</h2>" in stable and "not recorded for this version" in stable
    assert "<td>circle, square</td>" in stable and "<td>fp1</td>" in stable
    assert "<td>circle</td><td>10</td><td>1.000</td><td>0.900</td>" in canary
    assert "nothing (first version)" in stable and "<td>version 1</td>" in canary
    assert "href='/model-card/report/canary'" in canary
    assert report_of(base, 2) == "<h2>Decision</h2>" and report_of(base, 7) is None


def test_the_run_summary_states_the_bound_the_gate_applied_and_the_weakest_class():
    """A tolerance floor above --min-accuracy is what the gate applied, and the class of
    lowest recall is named beside its bound: the summary says both."""
    from domain.contracts import RunOutcome
    from pipeline.config import PipelineConfig
    from pipeline.local_runner import describe
    outcome = RunOutcome(cached=False, accuracy=0.93, baseline_accuracy=0.95, blessed=False,
                         pushed=False, pushed_path=None, pushed_version=None,
                         reason="not blessed", baseline_version=2, warm_start=None,
                         accuracy_bound=0.94, bound_reason="best version pushed on this data: "
                         "version 2 at 0.9500, less the tolerance 0.01",
                         weakest_class="triangle", weakest_recall=0.61)
    text = describe(outcome, PipelineConfig(min_accuracy=0.9, max_regression=0.01,
                                            min_class_recall=0.7))
    assert "(gate: >= 0.94, best version pushed on this data: version 2" in text
    assert "Weakest class: triangle, recall 0.6100 (gate: >= 0.7 for every class)" in text
    assert ">= 0.9 " not in text and "(gate: >= 0.9 and" not in text
