"""The Trainer's step budget, its validation rounds, and when training stops (``Convergence``)."""
from __future__ import annotations

import math
import time

from domain.features import ACCURACY_DELTA

# The derived step budget (train_steps=0): passes over the data to see about AUTO_EXAMPLES
# images (small datasets need many passes), at least MIN_EPOCHS and at most MAX_EPOCHS of them
# (epochs=0). The budget is a cap: training runs in validation rounds (Keras epochs) of at
# least MIN_ROUND_STEPS steps and ROUND_COST times the batches one validation reads, so a check
# costs a few percent of a round, and stops early (``Convergence``).
AUTO_EXAMPLES, MIN_EPOCHS, MAX_EPOCHS = 48_000, 5, 100
MIN_ROUND_STEPS, ROUND_COST = 25, 5
# Convergence, after each round from MIN_SHARE of the budget on (the learning rate's warm-up
# and the first steps at chance): a least-squares trend of validation accuracy over the
# rounds of the last WINDOW_SHARE of the steps run (at least MIN_WINDOW rounds). Training is
# still learning while the accuracy's gain over the window, Z standard errors above its
# estimate (a confidence bound), is over MIN_GAIN: a slow rise under round-to-round noise is
# still learning. (Validation loss is no guide: it keeps falling as the model grows surer of
# answers it already gets right.) A plateau is FLAT_ROUNDS rounds in a row without learning
# (one verdict of many can be noise). Then the rate anneals to its floor over a short tail of
# ANNEAL_SHARE of the steps run (at least ANNEAL_ROUNDS rounds), where the last gain usually
# comes, and training stops at its end.
WINDOW_SHARE, MIN_WINDOW, Z, MIN_GAIN = 0.3, 8, 0.5, 0.015
FLAT_ROUNDS, ANNEAL_SHARE, ANNEAL_ROUNDS, MIN_SHARE = 2, 0.1, 2, 0.2


def step_budget(train_steps: int, epochs: int, examples: int, batch_size: int) -> int:
    """``train_steps`` if given, else ``epochs`` passes over ``examples`` (derived from their
    number when 0: see ``AUTO_EXAMPLES``)."""
    if train_steps:
        return train_steps
    derived = math.ceil(AUTO_EXAMPLES / max(examples, 1))
    passes = epochs or min(MAX_EPOCHS, max(MIN_EPOCHS, derived))
    return passes * max(1, math.ceil(examples / batch_size))


def round_steps(steps: int, validation_batches: int) -> int:
    """Steps per validation round within a budget of ``steps``."""
    return max(1, min(steps, max(MIN_ROUND_STEPS, ROUND_COST * validation_batches)))


def trend(steps: list[int], values: list[float]) -> tuple[float, float]:
    """The least-squares change of ``values`` from the first of ``steps`` to the last, and
    its standard error (from the residuals; needs 3 points or more)."""
    mean_x, mean_y = sum(steps) / len(steps), sum(values) / len(values)
    sxx = sum((x - mean_x) ** 2 for x in steps)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(steps, values)) / sxx
    residuals = sum((y - mean_y - slope * (x - mean_x)) ** 2 for x, y in zip(steps, values))
    span = steps[-1] - steps[0]
    return slope * span, math.sqrt(residuals / (len(steps) - 2) / sxx) * span


def learning(steps: list[int], accuracies: list[float]) -> bool:
    """Whether validation rounds at ``steps`` still show learning (see ``WINDOW_SHARE``)."""
    first = steps[-1] * (1 - WINDOW_SHARE)
    window = min(len(steps) - MIN_WINDOW, next(i for i, s in enumerate(steps) if s >= first))
    if window < 0:
        return True
    gain, error = trend(steps[window:], accuracies[window:])
    return gain + Z * error > MIN_GAIN


def anneal_rounds(steps: int, per_round: int) -> int:
    """Rounds of the annealing tail after a plateau at ``steps`` (see ``ANNEAL_SHARE``)."""
    return max(ANNEAL_ROUNDS, math.ceil(ANNEAL_SHARE * steps / per_round))


class Convergence:
    """Decides after each validation round whether training goes on, and keeps the weights
    of the round of lowest validation loss (``keep``). ``stop`` is ``target`` once validation accuracy reaches
    ``target_accuracy`` (0: none); ``plateau`` once ``FLAT_ROUNDS`` rounds in a row show no
    learning (``learning``; not before ``MIN_SHARE`` of ``budget``; never without
    ``early_stop``), after a short annealing tail when ``schedule`` can anneal
    (``WarmupCosine``: the rate decays to its floor by the end of the tail); else ``budget``
    at the end. ``per_round``
    is the steps of a round; ``rounds`` holds ``(steps, seconds since start, validation
    accuracy, validation loss)``."""

    def __init__(self, budget: int, per_round: int, target_accuracy: float, started: float,
                 schedule=None, early_stop: bool = True):
        self.budget, self.per_round, self.schedule = budget, per_round, schedule
        self.target, self.started, self.early_stop = target_accuracy, started, early_stop
        self.rounds: list[tuple[int, float, float, float]] = []
        self.stop, self.best_weights, self.annealed_at = "budget", None, 0
        self._best_loss = math.inf  # of the kept weights
        self._end, self._flat = budget, 0  # the step training ends at, rounds without learning

    def keep(self, accuracy: float, loss: float, weights) -> None:
        """Keeps ``weights()`` when the round's validation loss is the lowest so far (as
        Keras' ``restore_best_weights`` does by default). Accuracy on a validation part of a
        hundred-odd images moves in steps of whole images, so its best round is often an early
        lucky one: on the digits, kept at step 100 of 225 (0.987 against 0.974 on 152 images,
        loss 0.124 against 0.075), it scored 0.942 on the eval split. Fine-tuning rounds,
        which decide nothing, come here alone; ``accuracy`` is for the callers' logs."""
        if loss < self._best_loss:
            self._best_loss, self.best_weights = loss, weights()

    def update(self, steps: int, accuracy: float, loss: float, weights) -> bool:
        """Records a round; returns whether to stop."""
        self.rounds.append((steps, round(time.perf_counter() - self.started, 2), accuracy,
                            round(loss, 5)))
        self.keep(accuracy, loss, weights)
        if self.target and accuracy >= self.target:
            self.stop = "target"
        elif steps >= self._end:
            self.stop = "plateau" if self.annealed_at else "budget"
        elif self.early_stop and not self.annealed_at and self._plateau(steps):
            self.annealed_at = steps
            if not hasattr(self.schedule, "anneal"):
                self.stop = "plateau"
            else:
                self._end = min(self.budget, steps + self.per_round * anneal_rounds(
                    steps, self.per_round))
                self.schedule.anneal(steps, self._end - steps)
        return self.stop != "budget"

    def _plateau(self, steps: int) -> bool:
        """Whether the rounds up to ``steps`` end in ``FLAT_ROUNDS`` without learning."""
        flat = steps >= MIN_SHARE * self.budget and not learning(
            [r[0] for r in self.rounds], [r[2] for r in self.rounds])
        self._flat = self._flat + 1 if flat else 0
        return self._flat >= FLAT_ROUNDS

    def time_to_accuracy(self, final: float) -> float | None:
        """Seconds until validation accuracy first came within ``ACCURACY_DELTA`` of ``final``."""
        return next((r[1] for r in self.rounds if r[2] >= final - ACCURACY_DELTA), None)
