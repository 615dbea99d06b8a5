"""Evidence for canary decisions: the true class of answered requests, shared by every gateway
replica, and the non-inferiority test ``ops.labels compare`` and ``promote`` decide on.

An answer's request id is signed and carries the answer (label, version, predicted class,
time): ``<payload>.<HMAC-SHA256>``, with a key kept beside the log (``.key``, made once by the
first gateway; every replica sharing the feedback volume uses it). Any replica verifies a
feedback without having answered the request itself, and a client cannot grade answers it
made up. Feedback is appended to one log, ``feedback.jsonl``, under an ``flock`` (several
processes and pods on one volume), once per answer: each gateway keeps the ids it has seen and
reads, under the lock, only what the others appended since. A line torn by a killed gateway
is skipped by readers and never glued to the next entry.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import math
import os
import secrets
import time
from typing import Callable

from domain import files

FEEDBACK = "feedback"  # the log's default folder, inside the model's serving dir
FEEDBACK_SCOPE = "feedback"  # the JWT scope a client needs to give feedback
LOG = "feedback.jsonl"
KEY = ".key"


class UnknownRequest(KeyError):
    """Feedback for a request id the gateways did not issue, or that already has feedback."""


class BadFeedback(ValueError):
    """Feedback that names a class the answering model does not have."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Answers:
    """Issues signed request ids for answers and records the feedback they get, in
    ``feedback_dir`` shared by every replica."""

    def __init__(self, feedback_dir: str):
        self.dir = feedback_dir
        self.path = os.path.join(feedback_dir, LOG)
        self._key: bytes | None = None
        self._seen: set[str] = set()
        self._offset = 0
        self._classes: dict[int, list[str]] = {}  # version -> class names, as answered

    def _locked(self):
        return files.locked(os.path.join(self.dir, ".lock"))

    def key(self) -> bytes:
        """The replicas' shared signing key, made by the first one."""
        if self._key is None:
            with self._locked():
                path = os.path.join(self.dir, KEY)
                if not os.path.exists(path):
                    files.write_atomically(path, secrets.token_bytes(32), mode=0o600)
                with open(path, "rb") as f:
                    self._key = f.read()
        return self._key

    def issue(self, label: str, version: int, predicted: str, class_names: list[str]) -> str:
        """The request id of an answer: the answer itself, signed."""
        self._classes[version] = list(class_names)
        payload = _b64(json.dumps([label, version, predicted, round(time.time(), 3),
                                   secrets.token_hex(6)]).encode())
        return f"{payload}.{_b64(hmac.new(self.key(), payload.encode(), hashlib.sha256).digest())}"

    def answer(self, request_id: str) -> dict:
        """The answer a request id carries; ``UnknownRequest`` unless a gateway signed it."""
        if not request_id.isascii():  # (no id a gateway issued; compare_digest needs ASCII)
            raise UnknownRequest(f"request id {request_id[:80]!r} was not issued by this "
                                 "model's gateways")
        payload, _, signature = request_id.partition(".")
        expected = _b64(hmac.new(self.key(), payload.encode(), hashlib.sha256).digest())
        if not signature or not hmac.compare_digest(signature, expected):
            raise UnknownRequest(f"request id {request_id[:80]!r} was not issued by this "
                                 "model's gateways")
        label, version, predicted, answered, _ = json.loads(base64.urlsafe_b64decode(
            payload + "=" * (-len(payload) % 4)))
        return {"label": label, "version": version, "predicted": predicted,
                "answered": answered}

    def record(self, request_id: str, true_class: str, subject: str = "",
               classes_of: Callable[[int], list[str] | None] = lambda version: None) -> dict:
        """Appends the answer of ``request_id`` with its true class and the ``subject`` who
        gave it; returns the entry. ``classes_of(version)``: the version's class names when
        this gateway did not answer it (None: unknown, not checked)."""
        answer = self.answer(request_id)
        names = self._classes.get(answer["version"]) or classes_of(answer["version"])
        if names is not None and true_class not in names:
            raise BadFeedback(f"class {true_class[:80]!r} is not one of version "
                              f"{answer['version']}'s classes ({', '.join(names[:20])})")
        entry = dict(answer, request_id=request_id, true=true_class, subject=subject,
                     correct=answer["predicted"] == true_class, time=time.time())
        with self._locked():
            self._catch_up()
            if request_id in self._seen:
                raise UnknownRequest(f"request id {request_id[:80]!r} already has feedback: "
                                     "it is taken once per answer")
            with open(self.path, "ab") as log:
                if log.tell() and not _ends_with_newline(self.path):
                    log.write(b"\n")  # a line torn by a killed gateway stays apart
                log.write(json.dumps(entry).encode() + b"\n")
                log.flush()
                os.fsync(log.fileno())
                self._offset = log.tell()
            self._seen.add(request_id)
        return entry

    def _catch_up(self) -> None:
        """Reads what other replicas appended since the last look (under the lock)."""
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as log:
            log.seek(self._offset)
            for line in log:
                with contextlib.suppress(ValueError):
                    self._seen.add(json.loads(line)["request_id"])
            self._offset = log.tell()


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def read_feedback(feedback_dir: str) -> list[dict]:
    """Every entry of ``feedback_dir``'s log (torn lines of a killed gateway skipped)."""
    entries = []
    with contextlib.suppress(FileNotFoundError), open(os.path.join(feedback_dir, LOG),
                                                      "rb") as log:
        for line in log:
            with contextlib.suppress(ValueError, KeyError):
                entries.append(json.loads(line))
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
    """Canary against stable on a fixed sample: the accuracy difference, the non-inferiority
    margin, and the one-sided p-value of "the canary is worse by the margin or more"."""

    stable: Arm
    canary: Arm
    difference: float
    margin: float
    z: float
    p_value: float
    sample_size: int  # the planned answers per version; the test uses the first ones

    def verdict(self, alpha: float) -> str:
        """"" when the canary may be promoted on this evidence, else why not."""
        short = [a for a in (self.stable, self.canary) if a.total < self.sample_size]
        if short:
            return (f"not enough feedback: version {short[0].version} has {short[0].total} of "
                    f"the {self.sample_size} answers planned")
        if not self.p_value < alpha:
            return (f"non-inferiority not shown: difference {self.difference:+.3f} with margin "
                    f"{self.margin:.3f} (p={self.p_value:.3g}, needs < {alpha})")
        return ""


def evidence(entries: list[dict], stable: int, canary: int, since: float,
             max_per_subject: int) -> dict[int, list[bool]]:
    """Per version, whether each answer was correct: answers given by label (not asked by
    version number) at ``since`` or later, in answer order, at most ``max_per_subject`` per
    subject and version (no client decides alone)."""
    kept: dict[int, list[bool]] = {stable: [], canary: []}
    per_subject: dict[tuple[int, str], int] = {}
    for entry in sorted(entries, key=lambda e: e.get("answered", 0)):
        version = entry.get("version")
        if version not in kept or entry.get("label") not in ("stable", "canary") or \
                entry.get("answered", 0) < since:
            continue
        key = (version, entry.get("subject", ""))
        per_subject[key] = per_subject.get(key, 0) + 1
        if per_subject[key] <= max_per_subject:
            kept[version].append(bool(entry["correct"]))
    return kept


def compare(entries: list[dict], stable: int, canary: int, since: float = 0.0,
            margin: float = 0.02, sample_size: int = 100,
            max_per_subject: int = 20) -> Comparison:
    """A fixed-horizon non-inferiority test of the canary's accuracy against the stable
    version's (a z-test on the difference of proportions, one-sided, on the normal law):
    H0 ``canary <= stable - margin``, with the variance of Agresti and Caffo. It uses the
    first ``sample_size`` answers per version (see ``evidence``), so looking again with more
    feedback never changes a decided result: the error rate stays ``alpha`` however often
    ``compare`` runs."""
    kept = evidence(entries, stable, canary, since, max_per_subject)
    arms = [Arm(v, sum(kept[v][:sample_size]), len(kept[v][:sample_size]))
            for v in (stable, canary)]
    a, b = arms
    difference = (b.accuracy - a.accuracy) if a.total and b.total else 0.0
    if not (a.total and b.total):
        return Comparison(a, b, difference, margin, 0.0, 1.0, sample_size)
    # The variance of Agresti and Caffo (one success and one failure added per arm), which
    # stays positive when an observed accuracy is 0 or 1.
    spread = math.sqrt(sum((arm.correct + 1) * (arm.total - arm.correct + 1)
                           / (arm.total + 2) ** 3 for arm in arms))
    z = (difference + margin) / spread
    p_value = 0.5 * math.erfc(z / math.sqrt(2))  # P(Z >= z), exact in the tail too
    return Comparison(a, b, difference, margin, z, p_value, sample_size)
