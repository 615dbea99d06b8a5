"""A TF Serving model base directory: the serving registry that the pusher, the operator
commands and the gateway share. Every change is a compare-and-set under one lock in the directory
itself, so it holds across runs, metadata dbs, operator commands and hosts sharing the volume.

Layout: ``<base>/<version>/`` (integer versions, each with its push record in
``assets.extra/push.json``), ``<base>/manifest.json`` (the history of every publication, a
cache of the push records: rebuilt from them when missing or torn), ``<base>/labels.json``
(the ``stable``/``canary`` labels the gateway routes by, and a label change waiting for TF
Serving to load its versions) and ``<base>/models.config`` (TF Serving's model config: the
highest version without labels, else exactly the labelled and the loading versions).

A version is copied into a ``.staging-*`` directory beside the versions (same filesystem; TF
Serving ignores names that are not integers), fsynced and renamed into place, so a watcher never
sees a partial model; small files are replaced whole (write, fsync, rename, fsync the folder).
``publish`` refuses (``ServedChanged``) when the served version is no longer the one the model
was gated against. The lock is an ``flock`` on ``<base>/.lock``: the kernel drops it when its
holder dies, even by ``kill -9``; whatever a killed holder left (staging, a manifest without
its last entry) is repaired by the next holder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from typing import Callable, Iterator

MANIFEST = "manifest.json"
# Each version's own manifest entry, inside it: written before the version is renamed into
# place, so a push killed after the rename is still recorded (``read_manifest`` heals).
PUSH_RECORD = os.path.join("assets.extra", "push.json")
LABELS = "labels.json"
MODELS_CONFIG = "models.config"
STAGING_PREFIX = ".staging-"
LOCK = ".lock"
# Where TF Serving mounts the serving dir (kfp/serving/): base paths in models.config use it.
TF_SERVING_ROOT = "/models"
# How long a version stays after its label moved away (gateways re-read labels per request;
# TF Serving re-reads models.config every 30 s in kfp/serving/).
LABEL_GRACE_SECONDS = 120


SERVED_CHANGED = "served version changed since evaluation"


class ServedChanged(RuntimeError):
    """The served version is not the one a model was gated against: nothing was pushed."""


def versions(base: str) -> list[int]:
    """The published versions present in ``base``, ascending."""
    if not os.path.isdir(base):
        return []
    return sorted(int(name) for name in os.listdir(base) if name.isdigit())


def _read_json(path: str, default):
    """The JSON in ``path``; ``default`` when it is missing or torn (a crash before fsync)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    except ValueError:
        return default


def read_manifest(base: str) -> list[dict]:
    """Every publication, by version: ``manifest.json``, plus the entries of versions whose
    publisher died between the rename and the manifest write (from their ``PUSH_RECORD``); a
    torn manifest is rebuilt from the versions' records."""
    entries = _read_json(os.path.join(base, MANIFEST), [])
    listed = {e["version"] for e in entries}
    for version in versions(base):
        record = _read_json(os.path.join(base, str(version), PUSH_RECORD), None)
        if version not in listed and record is not None:
            entries.append(dict(record, retained=True))
    return sorted(entries, key=lambda e: e["version"])


def entry_of(manifest: list[dict], version: int) -> dict | None:
    """The manifest entry of ``version`` (None: never published)."""
    return next((e for e in manifest if e["version"] == version), None)


def manifest_entry(base: str, version: int) -> dict | None:
    """The manifest entry of ``version`` in ``base`` (None: never published)."""
    return entry_of(read_manifest(base), version)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(base: str, name: str, text: str) -> None:
    """Replaces ``<base>/<name>`` whole and durably: a reader or a crash sees the old text or
    the new one, never a mix."""
    fd, tmp = tempfile.mkstemp(prefix=STAGING_PREFIX, dir=base)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # TF Serving and monitoring may run as other users
    os.replace(tmp, os.path.join(base, name))
    _fsync_dir(base)


def _write_manifest(base: str, entries: list[dict]) -> None:
    _write_atomically(base, MANIFEST, json.dumps(entries, indent=1, sort_keys=True))


@dataclasses.dataclass(frozen=True)
class Labels:
    """Which version is ``stable`` and which (0: none) is ``canary``, with the canary's share
    of the traffic."""

    stable: int
    canary: int = 0
    canary_weight: float = 0.0

    def check(self, present: list[int]) -> None:
        """Raises ValueError unless these labels can be served from versions ``present``."""
        for label, version in (("stable", self.stable), ("canary", self.canary)):
            if (version or label == "stable") and version not in present:
                raise ValueError(f"{label} version {version} is not in the serving dir "
                                 f"(present: {present or 'none'})")
        if self.canary and self.canary == self.stable:
            raise ValueError(f"canary and stable are both version {self.stable}")
        if not 0.0 <= self.canary_weight <= 1.0:
            raise ValueError(f"canary weight {self.canary_weight} is not in [0, 1]")
        if self.canary_weight and not self.canary:
            raise ValueError("a canary weight needs a canary version")

    @property
    def versions(self) -> dict[str, int]:
        """Label -> version, for the labels in use."""
        return {k: v for k, v in (("stable", self.stable), ("canary", self.canary)) if v}


def _labels_of(state: dict | None) -> Labels | None:
    return Labels(**{f.name: state[f.name] for f in dataclasses.fields(Labels)}) \
        if state else None


def _labels_state(base: str) -> dict:
    return _read_json(os.path.join(base, LABELS), {})


def read_labels(base: str) -> Labels | None:
    """The labels in effect (``<base>/labels.json``), None when labels are not in use."""
    state = _labels_state(base)
    return _labels_of(state) if "stable" in state else None


def read_pending(base: str) -> tuple[Labels, str] | None:
    """A label change waiting for TF Serving to load its versions, with its action."""
    pending = _labels_state(base).get("pending")
    return (_labels_of(pending), pending["action"]) if pending else None


def served_version(base: str) -> int:
    """The version that answers by default, or will once a pending label change completes:
    the ``stable`` label, else the highest (0: none). Models are gated against it."""
    pending = read_pending(base)
    labels = pending[0] if pending else read_labels(base)
    return labels.stable if labels else max(versions(base), default=0)


def run_definition(definition: str, run_time: dict) -> str:
    """What decides a run's result: the config's ``definition_sha256`` and the values of the
    run-time parameters (on Kubeflow they change per run)."""
    return hashlib.sha256(json.dumps([definition, run_time], sort_keys=True).encode()).hexdigest()


def identical_push(base_directory: str, definition: str, data_fingerprint: str) -> dict | None:
    """The manifest entry of the served version if a run of the same ``definition``
    (``run_definition``) on the same data pushed it, else None."""
    served = served_version(base_directory)
    entry = manifest_entry(base_directory, served)
    if (entry is None or entry.get("action") != "push" or not data_fingerprint
            or entry.get("definition") != definition
            or entry.get("data_fingerprint") != data_fingerprint):
        return None
    return entry


def models_config(model_name: str, labels: Labels | None, loading: tuple[int, ...] = ()) -> str:
    """TF Serving's ``--model_config_file`` text for ``model_name`` mounted under
    ``TF_SERVING_ROOT``: the highest version, or exactly the labelled ones and ``loading``
    (versions TF Serving must load before a label may point at them)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(
        name=model_name, base_path=f"{TF_SERVING_ROOT}/{model_name}", model_platform="tensorflow")
    if labels is None and not loading:
        model.model_version_policy.latest.num_versions = 1
    else:
        model.model_version_policy.specific.versions.extend(
            sorted(set(labels.versions.values() if labels else ()) | set(loading)))
        for label, version in (labels.versions if labels else {}).items():
            model.version_labels[label] = version
    return text_format.MessageToString(config)


_HELD: dict[str, list] = {}  # lock path -> [open file, depth] held by this process
_HELD_GUARD = threading.RLock()


@contextlib.contextmanager
def locked(base: str) -> Iterator[None]:
    """Holds ``base``'s lock (re-entrant within a process): every change to versions, labels
    and the manifest happens under it, so a read-modify-write is a compare-and-set."""
    os.makedirs(base, exist_ok=True)
    path = os.path.realpath(os.path.join(base, LOCK))
    with _HELD_GUARD:
        if path in _HELD:
            _HELD[path][1] += 1
            try:
                yield
            finally:
                _HELD[path][1] -= 1
            return
        with open(path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _HELD[path] = [lock, 1]
            try:
                yield
            finally:
                del _HELD[path]
                fcntl.flock(lock, fcntl.LOCK_UN)


def _history(state: dict, labels: Labels, action: str, reason: str, event: str) -> list:
    return state.get("history", []) + [dict(
        dataclasses.asdict(labels), action=action, reason=reason, event=event,
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), epoch=time.time())]


def labels_since(base: str) -> float:
    """When the labels in effect took effect (seconds since the epoch; 0: unknown)."""
    state = _labels_state(base)
    effective = [h for h in state.get("history", []) if h.get("event") == "effective"]
    return effective[-1].get("epoch", 0.0) if effective and "stable" in state else 0.0


def change_labels(base: str, decide: Callable[[Labels | None], Labels], action: str,
                  reason: str = "") -> Labels:
    """Phase one of a label change, as a compare-and-set: under the lock, ``decide`` maps the
    latest labels decided (a pending change, else those in effect; None: none yet) to the
    wanted ones (checked to be present). They are recorded as pending in ``labels.json``, and
    ``models.config`` asks TF Serving to load their versions while the labels in effect keep
    answering; ``settle_labels`` moves the labels once the versions are loaded. Never
    touches a version directory."""
    with locked(base):
        repair(base)
        state = _labels_state(base)
        effective = _labels_of(state) if "stable" in state else None
        labels = decide(_labels_of(state.get("pending")) or effective)
        labels.check(versions(base))
        state = dict(state, pending=dict(dataclasses.asdict(labels), action=action,
                                         reason=reason),
                     history=_history(state, labels, action, reason, "requested"))
        _write_atomically(base, LABELS, json.dumps(state, indent=1))
        _write_models_config(base, state)
    return labels


def settle_labels(base: str, available: Callable[[list[int]], bool]) -> Labels | None:
    """Phase two: if a label change is pending and ``available(its versions)`` says TF Serving
    has loaded them all, the labels move (``labels.json``, then ``models.config`` with exactly
    the labelled versions). Returns the labels in effect afterwards."""
    with locked(base):
        state = _labels_state(base)
        pending = state.get("pending")
        if not pending:
            return read_labels(base)
        labels = _labels_of(pending)
        if not available(sorted(labels.versions.values())):
            return _labels_of(state) if "stable" in state else None
        state = dict({k: v for k, v in state.items() if k != "pending"},
                     **dataclasses.asdict(labels),
                     history=_history(state, labels, pending["action"], pending["reason"],
                                      "effective"))
        _write_atomically(base, LABELS, json.dumps(state, indent=1))
        _write_models_config(base, state)
    return labels


def set_labels(base: str, labels: Labels, action: str, reason: str = "") -> None:
    """Points the labels at versions at once: for servers that load every present version
    (the gateway's in-process backend); with TF Serving, use ``change_labels`` and settle
    when it reports the versions available."""
    with locked(base):
        change_labels(base, lambda _: labels, action, reason)
        settle_labels(base, lambda _: True)


def repair(base: str) -> None:
    """What a holder killed at any point left, made whole (every change starts with it): its
    staging removed, the manifest rewritten from the versions' push records when it lags
    behind them, ``models.config`` rewritten from ``labels.json``."""
    with locked(base):
        for name in os.listdir(base):
            if name.startswith(STAGING_PREFIX):
                path = os.path.join(base, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        manifest = read_manifest(base)
        if manifest != _read_json(os.path.join(base, MANIFEST), []):
            _write_manifest(base, manifest)
        state = _labels_state(base)
        if state:
            _write_models_config(base, state)


def _write_models_config(base: str, state: dict) -> None:
    """TF Serving's config for a ``labels.json`` state: the labels in effect, loading the
    versions of a pending change (and, before the first labels, the highest)."""
    effective = _labels_of(state) if "stable" in state else None
    pending = _labels_of(state.get("pending"))
    loading = tuple(pending.versions.values()) if pending else ()
    if effective is None and pending:  # until now TF Serving served the highest version
        loading += (max(versions(base)),)
    text = models_config(os.path.basename(base), effective, loading)
    if _read_text(os.path.join(base, MODELS_CONFIG)) != text:
        _write_atomically(base, MODELS_CONFIG, text)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def check(base: str) -> list[str]:
    """The serving dir's invariants, as violations (none: ``[]``): every version complete
    (its push record is written last), the manifest listing exactly the version folders,
    labels (in effect and pending) on present versions, ``models.config`` carrying exactly
    the labels in effect, and every gated push made while its baseline was served."""
    present, manifest = versions(base), read_manifest(base)
    problems = [f"version {v} has no push record (partial)" for v in present
                if not os.path.exists(os.path.join(base, str(v), PUSH_RECORD))]
    retained = sorted(e["version"] for e in _read_json(os.path.join(base, MANIFEST), [])
                      if e.get("retained"))
    if retained != present:
        problems.append(f"manifest.json retains {retained}, folders are {present}")
    pending = read_pending(base)
    for name, labels in (("labels", read_labels(base)), ("pending labels",
                                                         pending[0] if pending else None)):
        if labels and not set(labels.versions.values()) <= set(present):
            problems.append(f"{name} {labels.versions} point to missing versions ({present})")
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2
    config = text_format.Parse(_read_text(os.path.join(base, MODELS_CONFIG)) or "",
                               model_server_config_pb2.ModelServerConfig())
    labels = read_labels(base)
    in_config = dict(config.model_config_list.config[0].version_labels) \
        if config.model_config_list.config else {}
    if in_config != (labels.versions if labels else {}):
        problems.append(f"models.config labels {in_config} are not labels.json's "
                        f"{labels.versions if labels else {}}")
    problems += [f"version {e['version']} was gated against {e['gated_against']} but pushed "
                 f"while {e['served_at_push']} was served" for e in manifest
                 if "gated_against" in e and e["gated_against"] != e["served_at_push"]]
    return problems


def _fsync_tree(root: str) -> None:
    for folder, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(folder)


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
        why = refuse(manifest) if refuse else ""
        served = served_version(base)
        if not why and expected_served is not None and served != expected_served:
            why = (f"{SERVED_CHANGED}: gated against "
                   f"{expected_served or 'nothing'}, now {served or 'nothing'}")
        if why:
            raise ServedChanged(why)
        version = max(versions(base) + [e["version"] for e in manifest], default=0) + 1
        staging = os.path.join(base, f"{STAGING_PREFIX}{version}-{uuid.uuid4().hex}")
        shutil.copytree(source_dir, staging)
        entry = dict(record, version=version, served_at_push=served,
                     time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     **({} if expected_served is None else {"gated_against": expected_served}))
        os.makedirs(os.path.dirname(os.path.join(staging, PUSH_RECORD)), exist_ok=True)
        with open(os.path.join(staging, PUSH_RECORD), "w", encoding="utf-8") as f:
            json.dump(entry, f, indent=1, sort_keys=True)
        for root, _, files in os.walk(staging):  # TF Serving may run as another user
            os.chmod(root, 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        _fsync_tree(staging)
        if before_rename is not None:
            before_rename(staging)
        os.rename(staging, os.path.join(base, str(version)))
        _fsync_dir(base)
        manifest.append(entry)
        _prune(base, keep, manifest)
        _write_manifest(base, manifest)
        if not os.path.exists(os.path.join(base, MODELS_CONFIG)):
            _write_atomically(base, MODELS_CONFIG, models_config(os.path.basename(base), None))
    return version


def _recently_labelled(base: str) -> set[int]:
    """The versions labels pointed to within the last ``LABEL_GRACE_SECONDS``: a gateway that
    read the labels just before they moved may still be loading one of them."""
    effective = [h for h in _labels_state(base).get("history", [])
                 if h.get("event") == "effective"]
    now = time.time()
    return {version for entry, moved in zip(effective, effective[1:])
            if now - moved.get("epoch", 0) < LABEL_GRACE_SECONDS
            for version in _labels_of(entry).versions.values()}


def _prune(base: str, keep: int, manifest: list[dict]) -> None:
    """Keeps the newest ``keep`` versions, the labelled ones (in effect or pending) and the
    recently labelled ones."""
    present = versions(base)
    pending = read_pending(base)
    labels = [lab for lab in (read_labels(base), pending[0] if pending else None) if lab]
    kept = set(present[-keep:]).union(*(lab.versions.values() for lab in labels),
                                      _recently_labelled(base))
    for version in present:
        if version not in kept:
            shutil.rmtree(os.path.join(base, str(version)))
    for entry in manifest:
        entry["retained"] = entry["version"] in kept


@contextlib.contextmanager
def reading(base: str, version: int) -> Iterator[str]:
    """The path of ``version``, which no publisher may prune while the caller reads it."""
    with locked(base):
        path = os.path.join(base, str(version))
        if not os.path.isdir(path):
            raise FileNotFoundError(f"version {version} is not in {base} "
                                    f"(present: {versions(base) or 'none'})")
        yield path


def rollback(base: str, to_version: int, reason: str, keep: int) -> int:
    """Re-publishes version ``to_version`` as the new highest (served) version, under the lock
    (a run that was gated against the version served before then pushes nothing). With labels
    in use the highest version is not what is served: move the ``stable`` label instead."""
    with reading(base, to_version) as source:
        if read_labels(base) or read_pending(base):
            raise ValueError(f"{base} serves by labels: point the stable label back instead "
                             f"(python -m ops.labels rollback --to-version {to_version})")
        origin = manifest_entry(base, to_version) or {}
        record = {k: v for k, v in origin.items()
                  if k not in ("version", "time", "retained", "gated_against", "served_at_push")}
        record.update(action="rollback", rollback_of=to_version, reason=reason)
        return publish(source, base, record, keep)
