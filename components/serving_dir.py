"""A TF Serving model base directory: atomic versioned publishing, retention, manifest.

Layout: ``<base>/<version>/`` (integer versions), ``<base>/manifest.json`` (the history of
every publication), and ``<base>/models.config``, TF Serving's model config: without labels it
serves the highest version; once ``<base>/labels.json`` names a ``stable`` (and optionally a
``canary``) version, TF Serving loads exactly those, under those ``version_labels``. A version is copied into a
``.staging-*`` directory beside the versions (same filesystem; TF Serving ignores names that
are not integers) and renamed into place, so a watcher never sees a partial model. Publishers
of one base directory are serialised by a lock file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import tempfile
import time
import uuid
from typing import Callable

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


def versions(base: str) -> list[int]:
    """The published versions present in ``base``, ascending."""
    if not os.path.isdir(base):
        return []
    return sorted(int(name) for name in os.listdir(base) if name.isdigit())


def read_manifest(base: str) -> list[dict]:
    """Every publication, by version: ``manifest.json``, plus the entries of versions whose
    publisher died between the rename and the manifest write (from their ``PUSH_RECORD``)."""
    path = os.path.join(base, MANIFEST)
    entries = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    listed = {e["version"] for e in entries}
    for version in versions(base):
        record = os.path.join(base, str(version), PUSH_RECORD)
        if version not in listed and os.path.exists(record):
            with open(record, encoding="utf-8") as f:
                entries.append(dict(json.load(f), retained=True))
    return sorted(entries, key=lambda e: e["version"])


def _write_atomically(base: str, name: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=STAGING_PREFIX, dir=base)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # TF Serving and monitoring may run as other users
    os.replace(tmp, os.path.join(base, name))


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


def read_labels(base: str) -> Labels | None:
    """The labels in ``<base>/labels.json``, None when labels are not in use."""
    path = os.path.join(base, LABELS)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    return Labels(**{f.name: state[f.name] for f in dataclasses.fields(Labels)})


def served_version(base: str) -> int:
    """The version that answers by default: the ``stable`` label, else the highest (0: none)."""
    labels = read_labels(base)
    return labels.stable if labels else max(versions(base), default=0)


def models_config(model_name: str, labels: Labels | None) -> str:
    """TF Serving's ``--model_config_file`` text for ``model_name`` mounted under
    ``TF_SERVING_ROOT``: the highest version, or exactly the labelled ones."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(
        name=model_name, base_path=f"{TF_SERVING_ROOT}/{model_name}", model_platform="tensorflow")
    if labels is None:
        model.model_version_policy.latest.num_versions = 1
    else:
        model.model_version_policy.specific.versions.extend(sorted(labels.versions.values()))
        for label, version in labels.versions.items():
            model.version_labels[label] = version
    return text_format.MessageToString(config)


def set_labels(base: str, labels: Labels, action: str, reason: str = "") -> None:
    """Points the labels at versions (checked to be present), atomically: ``labels.json``
    first (the gateway's routing), then ``models.config`` (TF Serving's), each replaced whole.
    Never touches a version directory; ``action`` and ``reason`` go to the labels' history."""
    with _locked(base):
        labels.check(versions(base))
        path = os.path.join(base, LABELS)
        history = []
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                history = json.load(f).get("history", [])
        history.append(dict(dataclasses.asdict(labels), action=action, reason=reason,
                            time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
        _write_atomically(base, LABELS, json.dumps(
            dict(dataclasses.asdict(labels), history=history), indent=1))
        _write_atomically(base, MODELS_CONFIG, models_config(os.path.basename(base), labels))


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
        entry = dict(record, version=version,
                     time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        os.makedirs(os.path.dirname(os.path.join(staging, PUSH_RECORD)), exist_ok=True)
        with open(os.path.join(staging, PUSH_RECORD), "w", encoding="utf-8") as f:
            json.dump(entry, f, indent=1, sort_keys=True)
        for root, _, files in os.walk(staging):  # TF Serving may run as another user
            os.chmod(root, 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        if before_rename is not None:
            before_rename(staging)
        os.rename(staging, os.path.join(base, str(version)))
        manifest.append(entry)
        _prune(base, keep, manifest)
        _write_manifest(base, manifest)
        if not os.path.exists(os.path.join(base, MODELS_CONFIG)):
            _write_atomically(base, MODELS_CONFIG, models_config(os.path.basename(base), None))
    return version


def _prune(base: str, keep: int, manifest: list[dict]) -> None:
    """Keeps the newest ``keep`` versions and the labelled ones."""
    present = versions(base)
    labels = read_labels(base)
    kept = set(present[-keep:]) | set(labels.versions.values() if labels else ())
    for version in present:
        if version not in kept:
            shutil.rmtree(os.path.join(base, str(version)))
    for entry in manifest:
        entry["retained"] = entry["version"] in kept


def rollback(base: str, to_version: int, reason: str, keep: int) -> int:
    """Re-publishes version ``to_version`` as the new highest (served) version. With labels in
    use the highest version is not what is served: move the ``stable`` label instead."""
    if read_labels(base):
        raise ValueError(f"{base} serves by labels: point the stable label back instead "
                         f"(python -m ops.labels rollback --to-version {to_version})")
    source = os.path.join(base, str(to_version))
    if not os.path.isdir(source):
        raise FileNotFoundError(f"version {to_version} is not in {base} "
                                f"(present: {versions(base) or 'none'})")
    origin = next((e for e in read_manifest(base) if e["version"] == to_version), {})
    record = {k: v for k, v in origin.items() if k not in ("version", "time", "retained")}
    record.update(action="rollback", rollback_of=to_version, reason=reason)
    return publish(source, base, record, keep)
