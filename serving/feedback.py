"""Evidence for A/B decisions: the true class of answered requests, per label and version.

The gateway remembers its recent answers (``Answers``); a client that later learns the true
class posts it for the request id, and the pair is appended to a JSON-lines file, one file per
gateway process, so replicas never interleave. ``compare`` turns those files into per-version
accuracy and a two-proportion z-test.
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import json
import math
import os
import socket
import threading
import time

FEEDBACK = "feedback"  # the logs' default folder, inside the model's serving dir


class UnknownRequest(KeyError):
    """Feedback for a request id the gateway did not answer, forgot, or already has."""


class Answers:
    """The last ``capacity`` answers by request id, and the feedback log they go to."""

    def __init__(self, feedback_dir: str, capacity: int = 100_000):
        self.capacity = capacity
        self.path = os.path.join(feedback_dir, f"{socket.gethostname()}-{os.getpid()}.jsonl")
        self._answers: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self._lock = threading.Lock()

    def remember(self, request_id: str, label: str, version: int, predicted: str) -> None:
        with self._lock:
            self._answers[request_id] = {"label": label, "version": version,
                                         "predicted": predicted}
            while len(self._answers) > self.capacity:
                self._answers.popitem(last=False)

    def record(self, request_id: str, true_class: str) -> dict:
        """Appends the answer of ``request_id`` with its true class; returns the entry."""
        with self._lock:
            answer = self._answers.pop(request_id, None)
            if answer is None:
                raise UnknownRequest(
                    f"request id {request_id!r} is unknown: feedback is taken once per answered "
                    f"request, among the last {self.capacity} this gateway answered")
            entry = dict(answer, request_id=request_id, true=true_class,
                         correct=answer["predicted"] == true_class, time=time.time())
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as log:
                log.write(json.dumps(entry) + "\n")
        return entry


def read_feedback(feedback_dir: str) -> list[dict]:
    """Every entry in ``feedback_dir``'s logs (a torn last line of a killed gateway skipped)."""
    entries = []
    for path in sorted(glob.glob(os.path.join(feedback_dir, "*.jsonl"))):
        with open(path, encoding="utf-8") as log:
            for line in log:
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    continue
    return entries


@dataclasses.dataclass(frozen=True)
class Arm:
    """One version's feedback: ``correct`` of ``total`` answers."""

    version: int
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Canary against stable: the accuracy difference and its two-sided p-value."""

    stable: Arm
    canary: Arm
    difference: float
    z: float
    p_value: float

    def verdict(self, alpha: float, min_samples: int) -> str:
        """"" when the canary may be promoted on this evidence, else why not."""
        short = [a for a in (self.stable, self.canary) if a.total < min_samples]
        if short:
            return (f"not enough feedback: version {short[0].version} has {short[0].total} of "
                    f"the {min_samples} answers needed")
        if self.difference < 0:
            return (f"canary is less accurate: {self.canary.accuracy:.3f} vs "
                    f"{self.stable.accuracy:.3f}")
        if not self.p_value < alpha:
            return (f"the difference {self.difference:+.3f} is not significant "
                    f"(p={self.p_value:.3g}, needs < {alpha})")
        return ""


def compare(entries: list[dict], stable: int, canary: int) -> Comparison:
    """Two-proportion z-test of the canary's accuracy against the stable version's."""
    arms = []
    for version in (stable, canary):
        mine = [e for e in entries if e["version"] == version]
        arms.append(Arm(version, sum(bool(e["correct"]) for e in mine), len(mine)))
    a, b = arms
    difference = (b.accuracy - a.accuracy) if a.total and b.total else 0.0
    pooled = (a.correct + b.correct) / (a.total + b.total) if a.total + b.total else 0.0
    spread = math.sqrt(pooled * (1 - pooled) * (1 / a.total + 1 / b.total)) \
        if a.total and b.total else 0.0
    z = difference / spread if spread else 0.0
    return Comparison(a, b, difference, z, math.erfc(abs(z) / math.sqrt(2)) if spread else 1.0)
