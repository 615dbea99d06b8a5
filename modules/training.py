"""The Trainer's fit: validation rounds until ``Convergence`` stops them, then, for an
application backbone, fine-tuning rounds of its top layers. Each phase ends on the weights of
the round of lowest validation loss so far (of either phase)."""
from __future__ import annotations

import absl.logging

from domain.features import EPOCH_LOG, STOP_LOG
from modules.budget import Convergence
from modules.data import Inputs
from modules.model import unfreeze_top

PATIENCE = 3  # ReduceLROnPlateau's rounds without a lower validation loss
ROUND_LOGS = ("loss", "accuracy", "val_loss", "val_accuracy")  # EPOCH_LOG's values


def fit_arguments(inputs: Inputs) -> dict:
    """``model.fit`` arguments for ``inputs.steps`` in validation rounds (Keras epochs,
    ``inputs.round_steps``), each ending in a validation on the validation part (never the
    eval split); the loss weighted by ``inputs.class_weight``."""
    return dict(x=inputs.train, validation_data=inputs.validation,
                validation_steps=inputs.validation_batches,
                epochs=inputs.steps // inputs.round_steps, steps_per_epoch=inputs.round_steps,
                verbose=0, class_weight=inputs.class_weight)


def rounds_callback(api, convergence: Convergence, fine_tune: bool):
    """Logs each validation round (``EPOCH_LOG``) and offers its weights to ``convergence``:
    in the first phase ``Convergence.update`` also decides when to stop (then ``STOP_LOG``);
    fine-tuning rounds only compete for the best (``Convergence.keep``). At the end of
    either phase the model gets the weights of the round of lowest validation loss."""

    class Rounds(api.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            loss, accuracy, val_loss, val_accuracy = (logs.get(k, float("nan"))
                                                      for k in ROUND_LOGS)
            absl.logging.info(EPOCH_LOG, epoch + 1, self.params["epochs"], loss, accuracy,
                              val_loss, val_accuracy)
            if fine_tune:
                convergence.keep(val_accuracy, val_loss, self.model.get_weights)
            elif convergence.update((epoch + 1) * self.params["steps"], val_accuracy, val_loss,
                                    self.model.get_weights):
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            if convergence.best_weights is not None:
                self.model.set_weights(convergence.best_weights)
            if not fine_tune:
                absl.logging.info(STOP_LOG, convergence.rounds[-1][0] if convergence.rounds
                                  else 0, convergence.budget, convergence.stop)

    return Rounds()


def phase_callbacks(config: dict, log_dir: str, api, convergence: Convergence,
                    fine_tune: bool = False) -> list:
    """One phase's callbacks: its rounds (``rounds_callback``), TensorBoard, and
    ReduceLROnPlateau when ``lr_schedule=plateau``."""
    callbacks = [rounds_callback(api, convergence, fine_tune),
                 api.callbacks.TensorBoard(log_dir=log_dir)]
    if config["lr_schedule"] == "plateau":
        callbacks.append(api.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3,
                                                         patience=PATIENCE))
    return callbacks


def train(model, inputs: Inputs, config: dict, log_dir: str, strategy, api,
          convergence: Convergence) -> dict:
    """Fits within the step budget in validation rounds until ``convergence`` stops it; then,
    for an application backbone with ``fine_tune_layers`` and ``fine_tune_epochs``, trains
    its top layers for that many more rounds at a tenth of the learning rate. Returns the
    Keras history of both phases (a value per round)."""
    arguments = fit_arguments(inputs)
    history = model.fit(**arguments, callbacks=phase_callbacks(config, log_dir, api,
                                                               convergence)).history
    fine_tune = config["fine_tune_layers"] and config["fine_tune_epochs"]
    if config["backbone"] == "cnn" or not fine_tune:
        return history
    absl.logging.info("Fine-tuning the top %d backbone layers", config["fine_tune_layers"])
    with strategy.scope():
        unfreeze_top(model, config["fine_tune_layers"], config["learning_rate"] / 10, api)
    done = len(history["loss"])  # rounds numbered on from the first phase's
    tuned = model.fit(**dict(arguments, initial_epoch=done,
                             epochs=done + config["fine_tune_epochs"]),
                      callbacks=phase_callbacks(config, log_dir, api, convergence,
                                                fine_tune=True)).history
    return {key: values + tuned.get(key, []) for key, values in history.items()}
