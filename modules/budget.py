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
MIN_ROUND_STEPS, ROUND_COST = 25, 8
# Convergence: a round improves when its validation accuracy beats the best by more than
# ACCURACY_DELTA; the plateau is PATIENCE rounds, and at least PLATEAU_SHARE of the steps the
# last improvement took, without one; no plateau counts before MIN_SHARE of the budget (the
# learning rate's warm-up and the first steps at chance).
PATIENCE, PLATEAU_SHARE, MIN_SHARE = 3, 0.5, 0.2


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


class Convergence:
    """Decides after each validation round whether training goes on, and keeps the weights
    of the best round. ``stop`` is ``target`` once validation accuracy reaches
    ``target_accuracy`` (0: none); ``plateau`` once it has not improved by more than
    ``ACCURACY_DELTA`` for ``PATIENCE`` rounds and ``PLATEAU_SHARE`` of the steps its last
    improvement took (not before ``MIN_SHARE`` of ``budget``), after an annealing tail of
    that length when ``schedule`` can anneal (``WarmupCosine``: the rate decays to its floor
    by the end of the tail); else ``budget`` at the end. ``per_round`` is the steps of a
    round; ``rounds`` holds ``(steps, seconds since start, validation accuracy)``."""

    def __init__(self, budget: int, per_round: int, target_accuracy: float, started: float,
                 schedule=None):
        self.budget, self.per_round, self.schedule = budget, per_round, schedule
        self.target, self.started = target_accuracy, started
        self.rounds: list[tuple[int, float, float]] = []
        self.stop, self.best_weights, self.annealed_at = "budget", None, 0
        self._best = (-1.0, -math.inf)  # (accuracy, -loss) of the kept weights
        self._level, self._improved = -1.0, 0  # the accuracy to beat, the last improvement
        self._end = budget  # the step training ends at

    def keep(self, accuracy: float, loss: float, weights) -> None:
        """Keeps ``weights()`` when the round beats the best so far (the lower loss breaks
        a tie); fine-tuning rounds, which decide nothing, come here alone."""
        if (accuracy, -loss) > self._best:
            self._best, self.best_weights = (accuracy, -loss), weights()

    def update(self, steps: int, accuracy: float, loss: float, weights) -> bool:
        """Records a round; returns whether to stop."""
        self.rounds.append((steps, round(time.perf_counter() - self.started, 2), accuracy))
        self.keep(accuracy, loss, weights)
        if accuracy > self._level + ACCURACY_DELTA:
            self._improved = steps
        self._level = max(self._level, accuracy)
        tail = max(PATIENCE * self.per_round, PLATEAU_SHARE * self._improved)
        if self.target and accuracy >= self.target:
            self.stop = "target"
        elif steps >= self._end:
            self.stop = "plateau" if self.annealed_at else "budget"
        elif (not self.annealed_at and steps >= MIN_SHARE * self.budget
              and steps - self._improved >= tail):
            self.annealed_at = steps
            if not hasattr(self.schedule, "anneal"):
                self.stop = "plateau"
            else:  # the tail in whole rounds
                self._end = min(self.budget, steps + self.per_round * math.ceil(
                    tail / self.per_round))
                self.schedule.anneal(steps, self._end - steps)
        return self.stop != "budget"

    def time_to_accuracy(self, final: float) -> float | None:
        """Seconds until validation accuracy first came within ``ACCURACY_DELTA`` of ``final``."""
        return next((s for _, s, a in self.rounds if a >= final - ACCURACY_DELTA), None)
