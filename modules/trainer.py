"""Trainer's ``run_fn``: read (modules.data), build (modules.model, modules.warm_start) and
train (modules.training) under a ``tf.distribute`` strategy (modules.strategy), then export
(modules.export)."""
from __future__ import annotations

import os
import tempfile
import time

from tfx.components.trainer.fn_args_utils import FnArgs

from domain.features import TRAINER_SUMMARY
from modules.budget import Convergence
from modules.data import read_inputs
from modules.distill import distiller, student_of
from modules.export import class_names, export_model
from modules.json_files import write_json
from modules.model import learning_rate, model_for
from modules.strategy import is_chief, setup_training
from modules.training import train
from modules.warm_start import warm_start

# What the Tuner searches; the Trainer takes its best values over the configured ones.
TUNED = ("learning_rate", "width", "dropout")


def tuned_values(hyperparameters: dict | None) -> dict:
    """The Tuner's best values (``TUNED``) from its KerasTuner config; empty without one."""
    if not hyperparameters:
        return {}
    import keras_tuner
    values = keras_tuner.HyperParameters.from_config(hyperparameters).values
    return {name: values[name] for name in TUNED if name in values}


class _Clock:
    """Seconds per named phase, in order."""

    def __init__(self):
        self.seconds, self.started = {}, time.perf_counter()
        self._last = self.started

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._last, 2)
        self._last = now


def run_fn(fn_args: FnArgs) -> None:
    """Set up the strategy, read the transformed examples, build (and warm-start) the model
    with the Tuner's best hyperparameters if any, train within the step budget, evaluate,
    export; ``TRAINER_SUMMARY`` in the ModelRun records the budget, the class names, the
    examples per class of the fit and validation parts, the class weights, the final
    validation metrics, the seconds of each phase, the rounds run (fine-tuning's included),
    why training stopped, the time to accuracy (``Convergence``) and the distillation's
    teacher, if any (``modules.distill``: the student alone is exported)."""
    clock = _Clock()
    tuned = tuned_values(fn_args.hyperparameters)
    config = dict(fn_args.custom_config, **tuned)
    tf_config, api, strategy = setup_training(config)
    batch_size = config["batch_size"] * strategy.num_replicas_in_sync
    inputs = read_inputs(fn_args, config, batch_size, fn_args.train_steps)
    config["train_steps"] = inputs.steps
    names = config["class_names"] = class_names(config, inputs.tf_transform_output)
    with strategy.scope():
        schedule = learning_rate(config["lr_schedule"], config["learning_rate"], inputs.steps,
                                 api)
        model = model_for(config, schedule, api)
        warm = warm_start(model, fn_args.base_model, config) if config["warm_start"] else None
    teacher = None
    if config["distill_teacher"]:  # the student (``model``) learns from a teacher too
        model, teacher = distiller(model, config, schedule, api, inputs, strategy,
                                   fn_args.model_run_dir)
    clock.lap("input_and_compile")
    convergence = Convergence(inputs.steps, inputs.round_steps, config["target_accuracy"],
                              clock.started, schedule, config["early_stop"])
    history = train(model, inputs, config, fn_args.model_run_dir, strategy, api, convergence)
    clock.lap("fit")
    metrics = model.evaluate(inputs.validation, steps=inputs.validation_batches, verbose=0,
                             return_dict=True)
    clock.lap("evaluate")
    # Every worker saves (collective ops need all of them); only the chief's copy is the model.
    out_dir = fn_args.serving_model_dir if is_chief(tf_config) else tempfile.mkdtemp()
    export_model(student_of(model), out_dir, config, inputs.tf_transform_output, names, warm,
                 fn_args, teacher)
    clock.lap("export")
    write_json(os.path.join(fn_args.model_run_dir, TRAINER_SUMMARY), {
        "train_examples": inputs.examples, "batch_size": batch_size, "train_steps": inputs.steps,
        "class_names": names, "class_counts": inputs.counts,
        "validation_percent": config["validation_percent"],
        "class_weight": inputs.class_weight and list(inputs.class_weight.values()),
        "rounds_run": len(history.get("loss", [])), "validation_metrics": metrics,
        "last_round_train_accuracy": history.get("accuracy", [None])[-1],
        "steps_run": convergence.rounds[-1][0] if convergence.rounds else 0,
        "stopped": convergence.stop, "rounds": convergence.rounds,
        "time_to_accuracy": convergence.time_to_accuracy(metrics["accuracy"]),
        "tuned": tuned, "seconds": clock.seconds, "teacher": teacher})
