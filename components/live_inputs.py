"""What changes outside the pipeline, read at run time instead of by TFX Resolvers.

Open-source Kubeflow Pipelines runs container and importer executors only (no Resolver
nodes), and its cache key is a task's parameters and input artifacts: it cannot see a new
data span or a rollback. Two small steps look at the world at run time and pass what they see
on as parameters, so every downstream cache key changes exactly when the world did:

* ``DataSpan``: the span to read (the ``span`` run-time parameter, or the latest) and TFX's
  fingerprint of its files (names, sizes, modification times);
* ``ServedVersion``: the version served (the ``stable`` label, else the highest version):
  the model is gated against it, and pushed only if it is still served then.

``ServedModel`` turns that version into artifacts: a copy of the served SavedModel (the
Evaluator's baseline and the warm-start source) and the statistics of the data it was trained
on (the drift baseline). With nothing served, both are empty and ``served_version`` is 0.

On Kubeflow the two observers run every time (the compiled spec turns their cache off). The
local runner observes the same facts just before the run and passes them as ``observed``, so
they are cached exactly while nothing changed. (No ``from __future__ import annotations``:
TFX reads the annotations at run time.)
"""
import json
import os
from typing import TypedDict

from tfx.dsl.component.experimental.annotations import OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import standard_artifacts
from tfx.utils import io_utils

from domain import registry, spans

SERVED_VERSION = "served_version"
SOURCE_MODEL_ID = "source_model_id"
# Where a pushed version keeps the statistics of its training data (TF Serving ignores it).
STATISTICS_PATH = os.path.join("assets.extra", "statistics")
TRAIN_STATISTICS = os.path.join("Split-train", "FeatureStats.pb")


def fileio_glob(pattern: str) -> list[spans.FileStat]:
    """TFX's own listing (``fileio.glob``, ``fileio.stat``): any filesystem TFX reads."""
    return [spans.FileStat(path, stat.length, stat.mtime_nsec, stat.is_directory)
            for path in fileio.glob(pattern) for stat in [fileio.stat(path)]]


def resolve_span(data_root: str, input_config: str, span: int) -> spans.Resolved:
    """``spans.resolve`` of ImportExampleGen's ``input_config`` under ``data_root``, listed by
    ``spans.local_glob`` (URIs: ``fileio_glob``)."""
    glob = fileio_glob if "://" in data_root else spans.local_glob
    return spans.resolve(data_root, spans.patterns_of(input_config), span, glob)


class DataSpanOutputs(TypedDict):
    range_config: str
    fingerprint: str


class ServedVersionOutputs(TypedDict):
    version: int
    definition: str


@component
def DataSpan(data_root: Parameter[str], input_config: Parameter[str], span: Parameter[int],
             observed: Parameter[str] = "") -> DataSpanOutputs:
    """The span ImportExampleGen reads, pinned, and its fingerprint (see ``resolve_span``)."""
    del observed  # the local runner's copy of ``fingerprint``: only part of the cache key
    resolved = resolve_span(data_root, input_config, span)
    return {"range_config": resolved.range_config, "fingerprint": resolved.fingerprint}


@component
def ServedVersion(base_directory: Parameter[str], config_sha256: Parameter[str],
                  span: Parameter[int], train_steps: Parameter[int], epochs: Parameter[int],
                  learning_rate: Parameter[float], batch_size: Parameter[int],
                  min_accuracy: Parameter[float], observed: Parameter[str] = "",
                  data_fingerprint: Parameter[str] = "") -> ServedVersionOutputs:
    """The served version under ``base_directory`` (0: nothing served) and the run's
    ``registry.run_definition`` of ``config_sha256`` (the config's ``definition_sha256``) and the
    run-time values (the pusher records it).

    Given the data's fingerprint (Kubeflow, where this step is never cached): if an
    identical run pushed the served version, the version that run saw instead, so that the
    identical run replays from cache. (Were its cached steps gone, the new model would meet a
    push against a served version it was not gated against, which the pusher refuses.)"""
    del observed  # the local runner's copy of ``version``: only part of the cache key
    definition = registry.run_definition(config_sha256, {
        "span": span, "train_steps": train_steps, "epochs": epochs,
        "learning_rate": learning_rate, "batch_size": batch_size, "min_accuracy": min_accuracy})
    entry = registry.identical_push(base_directory, definition, data_fingerprint)
    version = registry.served_version(base_directory) if entry is None else \
        entry.get("baseline_version") or 0
    return {"version": version, "definition": definition}


@component
def ServedModel(
    model: OutputArtifact[standard_artifacts.Model],
    statistics: OutputArtifact[standard_artifacts.ExampleStatistics],
    base_directory: Parameter[str],
    version: Parameter[int],
) -> None:
    """Copies served ``version`` into ``model`` (TFX layout: ``Format-Serving/``) and its
    training statistics into ``statistics``; with version 0 both stay empty."""
    model.set_int_custom_property(SERVED_VERSION, version)
    statistics.split_names = json.dumps(["train"])
    if not version:
        return
    try:  # under the serving dir's lock: no publisher prunes it while it is copied
        with registry.reading(base_directory, version) as source:
            io_utils.copy_dir(source, os.path.join(model.uri, "Format-Serving"))
            stats = os.path.join(source, STATISTICS_PATH)
            if os.path.isdir(stats):
                io_utils.copy_dir(stats, statistics.uri)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"served version {version} vanished: {err}") from None
    entry = registry.manifest_entry(base_directory, version) or {}
    if entry.get("model_id") is not None:
        model.set_int_custom_property(SOURCE_MODEL_ID, entry["model_id"])
