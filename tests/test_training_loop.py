"""The Trainer's two phases (issue 30): fine-tuning rounds compete for the best weights, and
the trainer summary counts the rounds of both phases."""
from __future__ import annotations

import json
import logging
import types

import numpy as np
import pytest
import tensorflow as tf

from domain.features import EPOCH_LOG, IMAGE_XF, STOP_LOG, TRAINER_SUMMARY, ImageSpec
from modules import trainer, training
from modules.budget import Convergence
from modules.data import FIT, VALIDATION, Inputs
from modules.model import build_model, compile_model


def test_a_fine_tuning_round_replaces_the_kept_weights_only_when_better():
    convergence = Convergence(100, 25, 0.0, 0.0)
    convergence.update(25, 0.9, 0.3, lambda: "first phase")
    convergence.keep(0.8, 0.1, lambda: "worse")
    assert convergence.best_weights == "first phase"
    convergence.keep(0.9, 0.2, lambda: "as accurate, lower loss")
    assert convergence.best_weights == "as accurate, lower loss"
    assert len(convergence.rounds) == 1 and convergence.stop == "budget"  # decides nothing


def _separable(n: int, seed: int) -> tf.data.Dataset:
    """Noise with a bright top half (label 1) or left half (label 0)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.random((n, 8, 8, 1)) * 0.2
    images[labels == 1, :4] += 0.8
    images[labels == 0, :, :4] += 0.8
    return tf.data.Dataset.from_tensor_slices(({IMAGE_XF: images.astype("float32")}, labels))


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    """``run_fn``'s trainer summary and log records: 2 rounds, then 2 fine-tuning rounds that
    are worse (the small CNN stands in for an application backbone, fast to train;
    "unfreezing" inverts its head and freezes it)."""
    from pipeline.config import PipelineConfig
    config = dict(PipelineConfig(image_height=8, image_width=8, image_channels=1,
                                 num_classes=2, backbone="mobilenet_v2", fine_tune_layers=20,
                                 fine_tune_epochs=2, lr_schedule="constant",
                                 strategy="one_device").trainer_config(),
                  train_steps=50, epochs=0, learning_rate=0.01, batch_size=16)  # run-time
    # 50 steps in rounds of 25 (the least), each validated on 2 batches.
    inputs = Inputs(None, {FIT: [100, 100], VALIDATION: [16, 16]}, 50, None,
                    _separable(200, 0).repeat().batch(16), _separable(32, 1).batch(16).repeat(),
                    2)

    def unfreeze_top(model, layers, rate, api):
        head = model.get_layer("probabilities")
        head.set_weights([-w for w in head.get_weights()])
        compile_model(model, 0.0, api)

    run_dir, handler, logger = tmp_path_factory.mktemp("run"), _Records(), logging.getLogger("absl")
    level = logger.level
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "read_inputs", lambda *args: inputs)
        patch.setattr(trainer, "export_model", lambda *args: None)
        patch.setattr(trainer, "model_for", lambda config, rate, api: build_model(
            ImageSpec.from_custom_config(config), rate, api=api))
        patch.setattr(training, "unfreeze_top", unfreeze_top)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            trainer.run_fn(types.SimpleNamespace(
                hyperparameters=None, custom_config=config, train_steps=50, base_model=None,
                model_run_dir=str(run_dir), serving_model_dir=str(run_dir / "model")))
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
    return json.loads((run_dir / TRAINER_SUMMARY).read_text()), handler.records


def test_fine_tuning_ends_on_the_best_round_of_either_phase(fine_tuned):
    """The model evaluated (and exported) is the best round's, not the last one's."""
    summary, records = fine_tuned
    rounds = [r.args for r in records if r.msg == EPOCH_LOG]
    accuracy, loss = max(rounds, key=lambda r: (r[5], -r[4]))[5:3:-1]
    assert accuracy > 0.9 and all(r[5] < 0.5 for r in rounds[2:])  # fine-tuning made it worse
    assert summary["validation_metrics"]["accuracy"] == pytest.approx(accuracy)
    assert summary["validation_metrics"]["loss"] == pytest.approx(loss, rel=1e-3, abs=1e-6)


def test_the_summary_counts_and_the_log_numbers_the_rounds_of_both_phases(fine_tuned):
    summary, records = fine_tuned
    assert summary["rounds_run"] == 4
    rounds = [r.args for r in records if r.msg == EPOCH_LOG]
    assert [(r[0], r[1]) for r in rounds] == [(1, 2), (2, 2), (3, 4), (4, 4)]
    assert len([r for r in records if r.msg == STOP_LOG]) == 1  # the first phase's
