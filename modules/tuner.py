"""Tuner's ``tuner_fn``: a KerasTuner random search over learning rate, width and dropout.

Each trial trains the Trainer's model on the same transformed examples for a quarter of the
Trainer's step budget (``tune_steps`` when set) and is scored by ``val_accuracy`` on the
validation part the Trainer carves from the train split (never the eval split, which judges).
The search stops after ``tune_trials`` trials or when ``tune_minutes`` have passed, whichever is
first; the Trainer then takes the best values (``modules.trainer.tuned_values``).
"""
from __future__ import annotations

import time

import keras_tuner
from tfx.components.trainer.fn_args_utils import FnArgs
from tfx.v1.components import TunerFnResult

from modules.data import read_inputs
from modules.model import learning_rate, model_for
from modules.strategy import setup_training
from modules.training import fit_arguments

WIDTHS = (16, 32, 48, 64)  # multiples of 8 (GroupNorm groups)


class DeadlineRandomSearch(keras_tuner.oracles.RandomSearchOracle):
    """Random search that starts no trial after ``deadline`` (``time.monotonic()``)."""

    def __init__(self, deadline: float, **kwargs):
        super().__init__(**kwargs)
        self.deadline = deadline

    def populate_space(self, trial_id):
        if time.monotonic() > self.deadline:
            return {"status": keras_tuner.engine.trial.TrialStatus.STOPPED, "values": None}
        return super().populate_space(trial_id)


def search_space(config: dict) -> keras_tuner.HyperParameters:
    """Learning rate (log scale), first-layer width and dropout; defaults are the config's."""
    space = keras_tuner.HyperParameters()
    space.Float("learning_rate", 3e-4, 1e-2, sampling="log", default=config["learning_rate"])
    space.Choice("width", sorted(set(WIDTHS) | {config["width"]}), default=config["width"])
    space.Float("dropout", 0.0, 0.5, step=0.1, default=round(config["dropout"], 1))
    return space


def tuner_fn(fn_args: FnArgs) -> TunerFnResult:
    config = dict(fn_args.custom_config)
    _, api, strategy = setup_training(config)
    batch_size = config["batch_size"] * strategy.num_replicas_in_sync
    if config["tune_steps"]:
        inputs = read_inputs(fn_args, config, batch_size, config["tune_steps"])
    else:
        inputs = read_inputs(fn_args, config, batch_size, fn_args.train_steps, share=0.25)

    def build(hp: keras_tuner.HyperParameters):
        values = dict(config, **hp.values)
        return model_for(values, learning_rate(values["lr_schedule"], values["learning_rate"],
                                               inputs.steps, api), api)

    oracle = DeadlineRandomSearch(
        deadline=time.monotonic() + 60 * config["tune_minutes"],
        objective=keras_tuner.Objective("val_accuracy", "max"),
        max_trials=config["tune_trials"], seed=config["seed"],
        hyperparameters=search_space(config))
    tuner = keras_tuner.Tuner(oracle=oracle, hypermodel=build, directory=fn_args.working_dir,
                              project_name="search", overwrite=True,
                              distribution_strategy=strategy)
    return TunerFnResult(tuner=tuner, fit_kwargs=fit_arguments(inputs))
