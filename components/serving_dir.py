"""A TF Serving model base directory: atomic versioned publishing, retention, manifest.

Layout: ``<base>/<version>/`` (integer versions; TF Serving serves the highest) and
``<base>/manifest.json``, the history of every publication. A version is copied into a
``.staging-*`` directory beside the versions (same filesystem; TF Serving ignores names that
are not integers) and renamed into place, so a watcher never sees a partial model. Publishers
of one base directory are serialised by a lock file.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
import uuid
from typing import Callable

MANIFEST = "manifest.json"
STAGING_PREFIX = ".staging-"
LOCK = ".lock"


def versions(base: str) -> list[int]:
    """The published versions present in ``base``, ascending."""
    if not os.path.isdir(base):
        return []
    return sorted(int(name) for name in os.listdir(base) if name.isdigit())


def read_manifest(base: str) -> list[dict]:
    path = os.path.join(base, MANIFEST)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_manifest(base: str, entries: list[dict]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=STAGING_PREFIX, dir=base)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(entries, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(base, MANIFEST))


@contextlib.contextmanager
def _locked(base: str):
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, LOCK), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_stale_staging(base: str) -> None:
    """Staging left by a publisher that died (we hold the lock: none is in progress)."""
    for name in os.listdir(base):
        if name.startswith(STAGING_PREFIX):
            path = os.path.join(base, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def publish(source_dir: str, base: str, record: dict, keep: int,
            before_rename: Callable[[str], None] | None = None) -> int:
    """Copies ``source_dir`` to the next version of ``base`` atomically; returns the version.

    ``record`` (JSON) is stored in the manifest with the version and time. Then only the newest
    ``keep`` versions stay (the highest, the one served, always does). ``before_rename`` is
    called with the staging path once the copy is complete (tests use it to fail there).
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    with _locked(base):
        _remove_stale_staging(base)
        manifest = read_manifest(base)
        version = max(versions(base) + [e["version"] for e in manifest], default=0) + 1
        staging = os.path.join(base, f"{STAGING_PREFIX}{version}-{uuid.uuid4().hex}")
        shutil.copytree(source_dir, staging)
        if before_rename is not None:
            before_rename(staging)
        os.rename(staging, os.path.join(base, str(version)))
        manifest.append(dict(record, version=version,
                             time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
        _prune(base, keep, manifest)
        _write_manifest(base, manifest)
    return version


def _prune(base: str, keep: int, manifest: list[dict]) -> None:
    present = versions(base)
    for version in present[:-keep]:
        shutil.rmtree(os.path.join(base, str(version)))
    for entry in manifest:
        entry["retained"] = entry["version"] in present[-keep:]


def rollback(base: str, to_version: int, reason: str, keep: int) -> int:
    """Re-publishes version ``to_version`` as the new highest (served) version."""
    source = os.path.join(base, str(to_version))
    if not os.path.isdir(source):
        raise FileNotFoundError(f"version {to_version} is not in {base} "
                                f"(present: {versions(base) or 'none'})")
    origin = next((e for e in read_manifest(base) if e["version"] == to_version), {})
    record = {k: v for k, v in origin.items() if k not in ("version", "time", "retained")}
    record.update(action="rollback", rollback_of=to_version, reason=reason)
    return publish(source, base, record, keep)
