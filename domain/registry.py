"""The serving registry's publications: a version published atomically as a compare-and-set
against the version a model was gated against, pruning, rollback, what is served, and the
registry's invariants. The layout and lock are ``domain.versions``'s, the labels
``domain.labels``'s; the pusher, the operator commands and the gateway share all three, so
every change holds across runs, metadata dbs, operator commands and hosts sharing the volume.

A version is copied into a ``.staging-*`` directory beside the versions (same filesystem),
fsynced and renamed into place, so a watcher never sees a partial model. ``publish`` refuses
(``ServedChanged``) when the served version is no longer the one the model was gated against.
Whatever a killed holder left (staging, a manifest without its last entry) is repaired by the
next holder.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from typing import Callable

from domain import files, labels
from domain.versions import (MANIFEST, PUSH_RECORD, STAGING_PREFIX, locked, manifest_entry,
                             read_manifest, reading, repair_files, versions, write_manifest)

SERVED_CHANGED = "served version changed since evaluation"


class ServedChanged(RuntimeError):
    """The served version is not the one a model was gated against: nothing was pushed."""


def served_version(base: str) -> int:
    """The version that answers by default, or will once a pending label change completes:
    the ``stable`` label, else the highest (0: none). Models are gated against it."""
    decided = labels.decided(base)
    return decided.stable if decided else max(versions(base), default=0)


def run_definition(definition: str, run_time: dict) -> str:
    """What decides a run's result: the config's ``definition_sha256`` and the values of the
    run-time parameters (on Kubeflow they change per run)."""
    return hashlib.sha256(json.dumps([definition, run_time], sort_keys=True).encode()).hexdigest()


def identical_push(base_directory: str, definition: str, data_fingerprint: str) -> dict | None:
    """The manifest entry of the served version if a run of the same ``definition``
    (``run_definition``) on the same data pushed it, else None."""
    entry = manifest_entry(base_directory, served_version(base_directory))
    if (entry is None or entry.get("action") != "push" or not data_fingerprint
            or entry.get("definition") != definition
            or entry.get("data_fingerprint") != data_fingerprint):
        return None
    return entry


def repair(base: str) -> None:
    """What a holder killed at any point left, made whole (every change starts with it):
    staging and the manifest (``repair_files``), and ``models.config`` rewritten from the
    labels."""
    with locked(base):
        repair_files(base)
        if labels.read_labels(base) or labels.read_pending(base):
            labels.write_models_config(base)


def check(base: str) -> list[str]:
    """The serving dir's invariants, as violations (none: ``[]``): every version complete
    (its push record is written last), the manifest listing exactly the version folders,
    labels (in effect and pending) on present versions, ``models.config`` carrying exactly
    the labels in effect, and every gated push made while its baseline was served."""
    present, manifest = versions(base), read_manifest(base)
    problems = [f"version {v} has no push record (partial)" for v in present
                if not os.path.exists(os.path.join(base, str(v), PUSH_RECORD))]
    retained = sorted(e["version"] for e in files.read_json(os.path.join(base, MANIFEST), [])
                      if e.get("retained"))
    if retained != present:
        problems.append(f"manifest.json retains {retained}, folders are {present}")
    pending = labels.read_pending(base)
    for name, lab in (("labels", labels.read_labels(base)),
                      ("pending labels", pending[0] if pending else None)):
        if lab and not set(lab.versions.values()) <= set(present):
            problems.append(f"{name} {lab.versions} point to missing versions ({present})")
    effective = labels.read_labels(base)
    in_config = labels.config_labels(base)
    if in_config != (effective.versions if effective else {}):
        problems.append(f"models.config labels {in_config} are not labels.json's "
                        f"{effective.versions if effective else {}}")
    problems += [f"version {e['version']} was gated against {e['gated_against']} but pushed "
                 f"while {e['served_at_push']} was served" for e in manifest
                 if "gated_against" in e and e["gated_against"] != e["served_at_push"]]
    return problems


def publish(source_dir: str, base: str, record: dict, keep: int,
            expected_served: int | None = None,
            refuse: Callable[[list[dict]], str] | None = None,
            before_rename: Callable[[str], None] | None = None) -> int:
    """Copies ``source_dir`` to the next version of ``base`` atomically; returns the version.

    A compare-and-set: with ``expected_served`` (the version the model was gated against, 0:
    none), raises ``ServedChanged`` unless it is still ``served_version``; ``refuse(manifest)``
    may name another reason to push nothing (raised as ``ServedChanged`` too). ``record``
    (JSON) is stored in the manifest with the version and time. Then only the newest ``keep``
    versions stay (the labelled ones always do). ``before_rename`` is called with the staging
    path once the copy is complete (tests use it to fail there).
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    with locked(base):
        repair(base)
        manifest = read_manifest(base)
        served = served_version(base)
        _refuse_unless_served(manifest, served, expected_served, refuse)
        version = max(versions(base) + [e["version"] for e in manifest], default=0) + 1
        entry = dict(record, version=version, served_at_push=served,
                     time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     **({} if expected_served is None else {"gated_against": expected_served}))
        staging = _staged_copy(source_dir, base, version, entry)
        if before_rename is not None:
            before_rename(staging)
        os.rename(staging, os.path.join(base, str(version)))
        files.fsync_dir(base)
        manifest.append(entry)
        _prune(base, keep, manifest)
        write_manifest(base, manifest)
        if not os.path.exists(os.path.join(base, labels.MODELS_CONFIG)):
            labels.write_models_config(base)
    return version


def _refuse_unless_served(manifest: list[dict], served: int, expected_served: int | None,
                          refuse: Callable[[list[dict]], str] | None) -> None:
    why = refuse(manifest) if refuse else ""
    if not why and expected_served is not None and served != expected_served:
        why = (f"{SERVED_CHANGED}: gated against "
               f"{expected_served or 'nothing'}, now {served or 'nothing'}")
    if why:
        raise ServedChanged(why)


def _staged_copy(source_dir: str, base: str, version: int, entry: dict) -> str:
    """A complete, durable copy of ``source_dir`` with its push record, readable by other
    users (TF Serving may run as another), in a staging folder of ``base``."""
    staging = os.path.join(base, f"{STAGING_PREFIX}{version}-{uuid.uuid4().hex}")
    shutil.copytree(source_dir, staging)
    os.makedirs(os.path.dirname(os.path.join(staging, PUSH_RECORD)), exist_ok=True)
    with open(os.path.join(staging, PUSH_RECORD), "w", encoding="utf-8") as f:
        json.dump(entry, f, indent=1, sort_keys=True)
    for root, _, names in os.walk(staging):
        os.chmod(root, 0o755)
        for name in names:
            os.chmod(os.path.join(root, name), 0o644)
    files.fsync_tree(staging)
    return staging


def _prune(base: str, keep: int, manifest: list[dict]) -> None:
    """Keeps the newest ``keep`` versions, the labelled ones (in effect or pending) and the
    recently labelled ones."""
    present = versions(base)
    kept = set(present[-keep:]).union(*(lab.versions.values() for lab in labels.in_use(base)),
                                      labels.recently_labelled(base))
    for version in present:
        if version not in kept:
            shutil.rmtree(os.path.join(base, str(version)))
    for entry in manifest:
        entry["retained"] = entry["version"] in kept


def rollback(base: str, to_version: int, reason: str, keep: int) -> int:
    """Re-publishes version ``to_version`` as the new highest (served) version, under the lock
    (a run that was gated against the version served before then pushes nothing). With labels
    in use the highest version is not what is served: move the ``stable`` label instead."""
    with reading(base, to_version) as source:
        if labels.in_use(base):
            raise ValueError(f"{base} serves by labels: point the stable label back instead "
                             f"(python -m ops.labels rollback --to-version {to_version})")
        origin = manifest_entry(base, to_version) or {}
        record = {k: v for k, v in origin.items()
                  if k not in ("version", "time", "retained", "gated_against", "served_at_push")}
        record.update(action="rollback", rollback_of=to_version, reason=reason)
        return publish(source, base, record, keep)
