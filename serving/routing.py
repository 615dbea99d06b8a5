"""Which version answers a request: the serving dir's labels (``domain.registry``),
the same ones TF Serving's ``models.config`` carries."""
from __future__ import annotations

import os
import random
import threading

from domain import registry
from domain.labels import LABELS, Labels, read_labels


class NoRoute(Exception):
    """No version for that label or version number (404), or none at all yet (503)."""

    def __init__(self, message: str, status: int = 404):
        super().__init__(message)
        self.status = status


class Router:
    """Routes to ``stable``, or to ``canary`` for its share of the traffic. Without labels
    in use, ``stable`` is the backend's highest version. Labels are re-read when their file
    changes, so a promotion or rollback takes effect on the next request."""

    def __init__(self, push_dir: str, backend, draw=random.random):
        self.push_dir, self.backend, self.draw = push_dir, backend, draw
        self._lock = threading.Lock()
        self._cache: tuple[tuple | None, Labels | None] = ((), None)
        self._followed: dict[str, int] | None = None

    def labels(self) -> Labels | None:
        """The labels in use, or None (then the highest version is stable)."""
        try:
            stat = os.stat(os.path.join(self.push_dir, LABELS))
            key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except FileNotFoundError:
            key = None
        with self._lock:
            if key != self._cache[0]:
                self._cache = (key, read_labels(self.push_dir) if key else None)
            return self._cache[1]

    def versions(self) -> dict[str, int]:
        """Label -> version, for the labels that answer now: the labels are followed only
        once the backend has every labelled version available (TF Serving loads a newly
        labelled version on its next config poll); until then the last mapping it could
        serve keeps answering."""
        labels, available = self.labels(), set(self.backend.versions())
        if labels:
            wanted = labels.versions
        else:
            wanted = {"stable": max(available)} if available else {}
        with self._lock:
            if not self._followed or set(wanted.values()) <= available:
                self._followed = wanted
            return dict(self._followed)

    def choose(self, label: str = "", version: int = 0) -> tuple[str, int]:
        """``(label, version)`` for a request that asked for ``label``, ``version`` (then the
        label is ``""``, whatever labels name it) or (neither) whatever the weights say."""
        if version:  # no label: an answer asked for by number is never A/B evidence
            if version not in self.backend.versions():
                raise NoRoute(f"version {version} is not served")
            return "", version
        versions = self.versions()
        if not versions:
            raise NoRoute("no model version is served yet", 503)
        if not label:
            labels = self.labels()
            label = "canary" if "canary" in versions and labels and \
                self.draw() < labels.canary_weight else "stable"
        if label not in versions:
            labels = self.labels()
            if labels and label in labels.versions:  # labelled, not loaded yet: 503 below
                return label, labels.versions[label]
            raise NoRoute(f"no version is labelled {label!r} (labels: "
                          f"{', '.join(versions)})")
        return label, versions[label]

    def class_names(self, version: int) -> list[str] | None:
        """The classes of ``version`` from its push record (None: not recorded)."""
        return (registry.manifest_entry(self.push_dir, version) or {}).get("class_names")
