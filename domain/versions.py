"""A TF Serving model base directory's versions and their manifest: the layout every holder of
the serving registry shares, its one lock, and the repair of what a killed holder left.

Layout: ``<base>/<version>/`` (integer versions, each with its push record in
``assets.extra/push.json``), ``<base>/manifest.json`` (the history of every publication, a
cache of the push records: rebuilt from them when missing or torn), ``<base>/labels.json`` and
``<base>/models.config`` (``domain.labels``). Every change happens under the ``flock`` on
``<base>/.lock`` (``domain.files.locked``): the kernel drops it when its holder dies, and the
next holder repairs what was left (``repair_files``).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Iterator

from domain import files

MANIFEST = "manifest.json"
# Each version's own manifest entry, inside it: written before the version is renamed into
# place, so a push killed after the rename is still recorded (``read_manifest`` heals).
PUSH_RECORD = os.path.join("assets.extra", "push.json")
STAGING_PREFIX = ".staging-"  # TF Serving ignores names that are not integers
LOCK = ".lock"


def versions(base: str) -> list[int]:
    """The published versions present in ``base``, ascending."""
    if not os.path.isdir(base):
        return []
    return sorted(int(name) for name in os.listdir(base) if name.isdigit())


def locked(base: str):
    """Holds ``base``'s lock (re-entrant within a thread): every change to versions, labels
    and the manifest happens under it, so a read-modify-write is a compare-and-set."""
    return files.locked(os.path.join(base, LOCK))


def read_manifest(base: str) -> list[dict]:
    """Every publication, by version: ``manifest.json``, plus the entries of versions whose
    publisher died between the rename and the manifest write (from their ``PUSH_RECORD``); a
    torn manifest is rebuilt from the versions' records."""
    entries = files.read_json(os.path.join(base, MANIFEST), [])
    listed = {e["version"] for e in entries}
    for version in versions(base):
        record = files.read_json(os.path.join(base, str(version), PUSH_RECORD), None)
        if version not in listed and record is not None:
            entries.append(dict(record, retained=True))
    return sorted(entries, key=lambda e: e["version"])


def entry_of(manifest: list[dict], version: int) -> dict | None:
    """The manifest entry of ``version`` (None: never published)."""
    return next((e for e in manifest if e["version"] == version), None)


def manifest_entry(base: str, version: int) -> dict | None:
    """The manifest entry of ``version`` in ``base`` (None: never published)."""
    return entry_of(read_manifest(base), version)


def write(base: str, name: str, text: str) -> None:
    """Replaces the small file ``<base>/<name>`` whole and durably."""
    files.write_atomically(os.path.join(base, name), text, prefix=STAGING_PREFIX)


def write_manifest(base: str, entries: list[dict]) -> None:
    write(base, MANIFEST, json.dumps(entries, indent=1, sort_keys=True))


def repair_files(base: str) -> None:
    """What a holder killed at any point left, made whole: its staging removed, the manifest
    rewritten from the versions' push records when it lags behind them."""
    with locked(base):
        for name in os.listdir(base):
            if name.startswith(STAGING_PREFIX):
                path = os.path.join(base, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        manifest = read_manifest(base)
        if manifest != files.read_json(os.path.join(base, MANIFEST), []):
            write_manifest(base, manifest)


@contextlib.contextmanager
def reading(base: str, version: int) -> Iterator[str]:
    """The path of ``version``, which no publisher may prune while the caller reads it."""
    with locked(base):
        path = os.path.join(base, str(version))
        if not os.path.isdir(path):
            raise FileNotFoundError(f"version {version} is not in {base} "
                                    f"(present: {versions(base) or 'none'})")
        yield path
