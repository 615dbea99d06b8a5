"""The ``stable`` and ``canary`` labels of a serving dir, changed in two phases so that TF
Serving has loaded a version before a label points at it, and TF Serving's ``models.config``
that follows them.

``<base>/labels.json`` holds the labels in effect, a change waiting for TF Serving to load its
versions (``pending``), and the history of both events. ``models.config`` loads the highest
version while no labels are in use, else exactly the labelled and the loading versions.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable

from domain import files
from domain.versions import locked, repair_files, versions, write

LABELS = "labels.json"
MODELS_CONFIG = "models.config"
# Where TF Serving mounts the serving dir (kfp/serving/): base paths in models.config use it.
TF_SERVING_ROOT = "/models"
# How long a version stays after its label moved away (gateways re-read labels per request;
# TF Serving re-reads models.config every 30 s in kfp/serving/).
LABEL_GRACE_SECONDS = 120


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


def _state(base: str) -> dict:
    return files.read_json(os.path.join(base, LABELS), {})


def read_labels(base: str) -> Labels | None:
    """The labels in effect (``<base>/labels.json``), None when labels are not in use."""
    state = _state(base)
    return _labels_of(state) if "stable" in state else None


def read_pending(base: str) -> tuple[Labels, str] | None:
    """A label change waiting for TF Serving to load its versions, with its action."""
    pending = _state(base).get("pending")
    return (_labels_of(pending), pending["action"]) if pending else None


def decided(base: str) -> Labels | None:
    """The labels last decided: a pending change's, else those in effect (None: none)."""
    pending = read_pending(base)
    return pending[0] if pending else read_labels(base)


def in_use(base: str) -> list[Labels]:
    """The labels in effect and pending (each when there is one)."""
    pending = read_pending(base)
    return [lab for lab in (read_labels(base), pending[0] if pending else None) if lab]


def _history(state: dict, labels: Labels, action: str, reason: str, event: str) -> list:
    return state.get("history", []) + [dict(
        dataclasses.asdict(labels), action=action, reason=reason, event=event,
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), epoch=time.time())]


def labels_since(base: str) -> float:
    """When the labels in effect took effect (seconds since the epoch; 0: unknown)."""
    state = _state(base)
    effective = [h for h in state.get("history", []) if h.get("event") == "effective"]
    return effective[-1].get("epoch", 0.0) if effective and "stable" in state else 0.0


def recently_labelled(base: str) -> set[int]:
    """The versions labels pointed to within the last ``LABEL_GRACE_SECONDS``: a gateway that
    read the labels just before they moved may still be loading one of them."""
    effective = [h for h in _state(base).get("history", []) if h.get("event") == "effective"]
    now = time.time()
    return {version for entry, moved in zip(effective, effective[1:])
            if now - moved.get("epoch", 0) < LABEL_GRACE_SECONDS
            for version in _labels_of(entry).versions.values()}


def change_labels(base: str, decide: Callable[[Labels | None], Labels], action: str,
                  reason: str = "") -> Labels:
    """Phase one of a label change, as a compare-and-set: under the lock, ``decide`` maps the
    latest labels decided (a pending change, else those in effect; None: none yet) to the
    wanted ones (checked to be present). They are recorded as pending in ``labels.json``, and
    ``models.config`` asks TF Serving to load their versions while the labels in effect keep
    answering; ``settle_labels`` moves the labels once the versions are loaded. Never
    touches a version directory."""
    with locked(base):
        repair_files(base)
        state = _state(base)
        labels = decide(decided(base))
        labels.check(versions(base))
        state = dict(state, pending=dict(dataclasses.asdict(labels), action=action,
                                         reason=reason),
                     history=_history(state, labels, action, reason, "requested"))
        write(base, LABELS, json.dumps(state, indent=1))
        write_models_config(base)
    return labels


def settle_labels(base: str, available: Callable[[list[int]], bool]) -> Labels | None:
    """Phase two: if a label change is pending and ``available(its versions)`` says TF Serving
    has loaded them all, the labels move (``labels.json``, then ``models.config`` with exactly
    the labelled versions). Returns the labels in effect afterwards."""
    with locked(base):
        state = _state(base)
        pending = state.get("pending")
        if not pending:
            return read_labels(base)
        labels = _labels_of(pending)
        if not available(sorted(labels.versions.values())):
            return read_labels(base)
        state = dict({k: v for k, v in state.items() if k != "pending"},
                     **dataclasses.asdict(labels),
                     history=_history(state, labels, pending["action"], pending["reason"],
                                      "effective"))
        write(base, LABELS, json.dumps(state, indent=1))
        write_models_config(base)
    return labels


def set_labels(base: str, labels: Labels, action: str, reason: str = "") -> None:
    """Points the labels at versions at once: for servers that load every present version
    (the gateway's in-process backend); with TF Serving, use ``change_labels`` and settle
    when it reports the versions available."""
    with locked(base):
        change_labels(base, lambda _: labels, action, reason)
        settle_labels(base, lambda _: True)


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


def config_labels(base: str) -> dict[str, int]:
    """The version labels ``models.config`` carries ({}: none, or no config)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2
    config = text_format.Parse(files.read_text(os.path.join(base, MODELS_CONFIG)) or "",
                               model_server_config_pb2.ModelServerConfig())
    return dict(config.model_config_list.config[0].version_labels) \
        if config.model_config_list.config else {}


def write_models_config(base: str) -> None:
    """TF Serving's config for the labels: those in effect, loading the versions of a pending
    change (and, before the first labels, the highest); the highest without labels."""
    state = _state(base)
    effective = read_labels(base)
    pending = _labels_of(state.get("pending"))
    loading = tuple(pending.versions.values()) if pending else ()
    if effective is None and pending:  # until now TF Serving served the highest version
        loading += (max(versions(base)),)
    text = models_config(os.path.basename(base), effective, loading)
    if files.read_text(os.path.join(base, MODELS_CONFIG)) != text:
        write(base, MODELS_CONFIG, text)
