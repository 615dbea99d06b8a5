"""An identical rerun, found before the training stack is imported.

A local run whose every component would be a cache hit (the last completed run in this
metadata db had the same config, code, data files and served version) need not spend seconds
importing TensorFlow, TFX, TFMA and Beam to find so. ``identity`` computes, in pure Python,
what decides TFX's cache keys: the config (every field but ``verbose``; the data root's class
names), the project's code and the stack's versions, what the observers will see (TFX's
fingerprint of the span, ``domain.spans``, and the served version, or the one an identical run
saw: ``observed_version``) and, beyond that fingerprint, every file under the data root by
name, size, mtime, ctime and inode (a write changes its ctime, which no tool sets back).

A completed run records its key on its MLMD ``pipeline_run`` context (``record``) when what was
computed here agrees with what TFX observed. ``replay`` finds the last completed run's key equal
and records the rerun as TFX records cache hits (``pipeline.tfx_cache_record``): a new
``pipeline_run`` context and, per component, a CACHED execution with the same properties,
contexts and artifacts; then the key,
the outcome and the report of the run that computed it, last (a replay killed before has no
key: the next run takes the normal path). Anything uncertain (no metadata db, an object
store, an output file gone, a data layout whose fingerprint is not reproduced here) takes the
normal path.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from domain import registry, spans
from domain.contracts import RunOutcome
from modules.provenance import project_sha256
from pipeline import tfx_cache_record
from pipeline.config import RUN_TIME_PARAMETERS, PipelineConfig
from pipeline.tfx_cache_record import RUN_CONTEXT

KEY, OUTCOME, REPORT = "rerun_key", "outcome", "report"  # a run context's custom properties
# The libraries whose code computes the artifacts: another version is another run.
STACK = ("tfx", "tensorflow", "tensorflow-transform", "tensorflow-model-analysis",
         "tensorflow-data-validation", "apache-beam", "keras", "ml-metadata")
MAX_FILES = 100_000  # a data root with more entries is not listed: the normal path


@dataclasses.dataclass(frozen=True)
class Identity:
    """What decides a local run's cache keys (``key``), and what the observers will see."""
    key: str
    data_fingerprint: str
    served_version: int


def identity(config: PipelineConfig) -> Identity | None:
    """The run's ``Identity``; None when the cache is off or something is uncertain."""
    fingerprint = span_fingerprint(config)
    files = _files_digest(config.data_root)
    if not config.enable_cache or fingerprint is None or files is None:
        return None
    served = observed_version(config, fingerprint)
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k != "verbose"}
    schema = _files_digest(config.schema_path) if config.schema_path else ""
    key = hashlib.sha256(json.dumps([
        fields, config.trainer_config(), project_sha256(), _versions(), files, schema,
        fingerprint, served], sort_keys=True).encode()).hexdigest()
    return Identity(key, fingerprint, served)


def _versions() -> list[str | None]:
    """The installed versions of ``STACK`` (None: not installed under that name)."""
    from importlib import metadata
    found = []
    for name in STACK:
        try:
            found.append(metadata.version(name))
        except metadata.PackageNotFoundError:
            found.append(None)
    return found


def observed_version(config: PipelineConfig, fingerprint: str) -> int:
    """The served version, or, if an identical run (same definition, same data, its model in
    this MLMD) pushed it, the version that run saw served.

    Such a run would only re-evaluate its own model against its served copy and push nothing
    ("already pushed"). Showing it what the pushing run saw makes every step a cache hit
    instead; anything different (a new model, new data or settings, a rollback to another
    model, a new metadata db) keeps the served version as the baseline.
    """
    served = registry.served_version(config.push_dir)
    entry = registry.identical_push(config.push_dir, registry.run_definition(
        config.definition_sha256(), {name: getattr(config, name) for name in RUN_TIME_PARAMETERS}),
        fingerprint)
    if (not config.enable_cache or entry is None or entry["version"] != served
            or not os.path.exists(config.metadata_path)):
        return served
    from domain.mlmd_queries import metadata_store
    models = metadata_store(config.metadata_path).get_artifacts_by_id([entry["model_id"]])
    if not models or models[0].uri != entry["model_uri"]:
        return served
    return entry.get("baseline_version") or 0


def span_fingerprint(config: PipelineConfig) -> str | None:
    """TFX's fingerprint of the files the run reads (``domain.spans``), computed without
    TensorFlow; None where it might not be TFX's (``spans.certain_fingerprint``)."""
    return spans.certain_fingerprint(config.data_root, spans.split_patterns(config.spans),
                                     config.span)


def _files_digest(path: str) -> str | None:
    """A hash of every file and folder under ``path`` (or of the file): name, size, mtime,
    ctime and inode; None for an object store, a missing path or too many entries."""
    if "://" in path or not os.path.exists(path):
        return None
    entries = []
    try:
        for folder, dirs, files in os.walk(path, followlinks=True) if os.path.isdir(path) \
                else [(os.path.dirname(path), [], [os.path.basename(path)])]:
            for name in dirs + files:
                s = os.stat(os.path.join(folder, name))
                entries.append([os.path.relpath(os.path.join(folder, name), path), s.st_size,
                                s.st_mtime_ns, s.st_ctime_ns, s.st_ino])
            if len(entries) > MAX_FILES:
                return None
    except OSError:  # a dangling link, a file removed meanwhile
        return None
    return hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()


def record(config: PipelineConfig, found: Identity | None, data_fingerprint: str,
           served_version: int, outcome: RunOutcome, since_execution_id: int) -> None:
    """Records ``found``'s key, the outcome and its report on the MLMD run context of the
    completed run after ``since_execution_id``, if what ``identity`` computed is what TFX
    observed (``data_fingerprint``, ``served_version``)."""
    if found is None or (found.data_fingerprint, found.served_version) != (
            data_fingerprint, served_version):
        return
    from domain.mlmd_queries import metadata_store
    store = metadata_store(config.metadata_path, writable=True)
    run_type = _run_type(store)
    runs = {c.id: c for e in store.get_executions() if e.id > since_execution_id
            for c in store.get_contexts_by_execution(e.id) if c.type_id == run_type}
    if len(runs) == 1:
        _mark(store, *runs.values(), found.key, outcome, outcome.report)


def _run_type(store) -> int:
    return store.get_context_type(RUN_CONTEXT).id


def _mark(store, run, key: str, outcome: RunOutcome, report: str) -> None:
    figures = {k: v for k, v in dataclasses.asdict(outcome).items() if k != "report"}
    run.custom_properties[KEY].string_value = key
    run.custom_properties[OUTCOME].string_value = json.dumps(figures, sort_keys=True)
    run.custom_properties[REPORT].string_value = report
    store.put_contexts([run])


def replay(config: PipelineConfig, found: Identity | None) -> RunOutcome | None:
    """If the last completed run in this MLMD had ``found``'s key (and its outputs and report
    are still there): records this run as its cache hits, prints a line per component, writes
    the report and returns the outcome; else None (the normal path)."""
    if found is None or not os.path.exists(config.metadata_path) or \
            "://" in config.pipeline_root:
        return None
    from ml_metadata.proto import metadata_store_pb2

    from domain.mlmd_queries import metadata_store
    store = metadata_store(config.metadata_path, writable=True)
    newest = max(store.get_executions(), key=lambda e: e.id, default=None)
    last = [c for c in (store.get_contexts_by_execution(newest.id) if newest else [])
            if c.type_id == _run_type(store)]
    if len(last) != 1 or last[0].custom_properties[KEY].string_value != found.key:
        return None
    last = last[0]
    executions = sorted(store.get_executions_by_context(last.id), key=lambda e: e.id)
    events = store.get_events_by_execution_ids([e.id for e in executions])
    artifacts = {a.id: a for a in store.get_artifacts_by_id(list({e.artifact_id
                                                                 for e in events}))}
    report = last.custom_properties[REPORT].string_value
    if (any(e.last_known_state not in (metadata_store_pb2.Execution.COMPLETE,
                                       metadata_store_pb2.Execution.CACHED) for e in executions)
            or any(a.state != metadata_store_pb2.Artifact.LIVE or not os.path.exists(a.uri)
                   for a in artifacts.values()) or not os.path.exists(report)):
        return None
    run = tfx_cache_record.new_run(store, last.type_id)
    copies = [tfx_cache_record.record_cache_hit(store, execution, events, artifacts, run)
              for execution in executions]
    return _outcome(config, store, last, run, copies, report)


def _outcome(config: PipelineConfig, store, last, run, copies: list[int],
             report: str) -> RunOutcome:
    """The replayed run's figures with this run's push (none: a cached pusher replays), its
    report written and everything recorded on ``run``."""
    from domain.mlmd_queries import run_push
    from pipeline.report import write_rerun_report
    push = run_push(store, store.get_executions_by_id(copies))
    outcome = dataclasses.replace(
        RunOutcome(**json.loads(last.custom_properties[OUTCOME].string_value)), cached=True,
        pushed=push.pushed, pushed_path=push.destination, pushed_version=push.version,
        reason=push.reason)
    outcome = dataclasses.replace(outcome, report=write_rerun_report(
        config, report, f"Identical rerun (MLMD run {run.name}) of the run {last.name}: the "
        "same settings, code, data files and served version; every component reused that "
        f"run's results from its cache and nothing was pushed ({outcome.reason}). That run's "
        "report follows."))
    _mark(store, run, last.custom_properties[KEY].string_value, outcome, report)
    return outcome
