"""The Tuner's search space and budget (the whole Tuner runs in test_pipeline_e2e)."""
from __future__ import annotations

import time

import keras_tuner

from modules.tuner import DeadlineRandomSearch, search_space
from pipeline.config import PipelineConfig


def test_search_space_starts_from_the_configured_values():
    space = search_space(PipelineConfig(learning_rate=0.002, width=40, dropout=0.3,
                                        tune=True).tuner_config())
    assert space.values == {"learning_rate": 0.002, "width": 40, "dropout": 0.3}
    assert all(w % 8 == 0 for w in space.space[1].values)  # GroupNorm's 8 groups


def test_no_trial_starts_after_the_deadline():
    def oracle(deadline):
        return DeadlineRandomSearch(deadline=deadline, max_trials=5, seed=0,
                                    objective=keras_tuner.Objective("val_accuracy", "max"),
                                    hyperparameters=search_space(
                                        PipelineConfig().tuner_config()))
    running = oracle(time.monotonic() + 60).populate_space("0")
    assert running["status"] == keras_tuner.engine.trial.TrialStatus.RUNNING
    stopped = oracle(time.monotonic() - 1).populate_space("0")
    assert stopped["status"] == keras_tuner.engine.trial.TrialStatus.STOPPED
