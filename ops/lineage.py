"""Lineage from ML Metadata: ``python -m ops.lineage {runs | version N | span N}``.

* ``runs``: every pipeline run, its executions' states and what it pushed;
* ``version N``: what produced served version N: the data span(s) with file counts and a
  fingerprint, schema, transform graph, code (git commit and dirty flag, a hash of the module
  files, package version), key options, accuracy and gate, the baseline version;
* ``span N``: the models that data span fed, and the versions they were pushed as.

Prints a short summary; ``--json`` prints everything found. Takes the pipeline options of the
local runner (``--work-dir``, ``--metadata-path``, ...).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import defaultdict

from ml_metadata.proto import metadata_store_pb2
from tfx.utils import path_utils

from components import serving_dir
from components.contracts import PushResult
from modules.features import CODE_FILE
from pipeline.config import PipelineConfig
from pipeline.outcome import component_names, metadata_store, produced_by

INPUT_EVENTS = (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT)
OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)


class Lineage:
    """Walks the MLMD graph of one pipeline."""

    def __init__(self, store):
        self.store = store
        self.execution_types = component_names(store)

    def _value(self, value):
        return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None

    def producer(self, artifact_id: int):
        """The execution that output the artifact (the cache hit's original, if several)."""
        events = [e for e in self.store.get_events_by_artifact_ids([artifact_id])
                  if e.type in OUTPUT_EVENTS]
        if not events:
            return None
        return self.store.get_executions_by_id([min(e.execution_id for e in events)])[0]

    def io(self, execution_id: int, kinds) -> dict[str, list]:
        """Input (or output) artifacts of an execution by key."""
        by_key = defaultdict(list)
        events = [e for e in self.store.get_events_by_execution_ids([execution_id])
                  if e.type in kinds]
        artifacts = {a.id: a for a in self.store.get_artifacts_by_id(
            [e.artifact_id for e in events])}
        for event in events:
            by_key[event.path.steps[0].key].append(artifacts[event.artifact_id])
        return dict(by_key)

    def describe_execution(self, execution) -> dict:
        properties = dict(execution.properties)
        properties.update(execution.custom_properties)  # TFX records exec properties here
        return {"execution_id": execution.id,
                "component": self.execution_types[execution.type_id],
                "properties": {k: self._value(v) for k, v in properties.items()}}

    def upstream(self, artifact_id: int) -> dict:
        """The artifact, its producer, and recursively what that producer consumed."""
        artifact = self.store.get_artifacts_by_id([artifact_id])[0]
        node = {"artifact_id": artifact.id, "uri": artifact.uri,
                "custom": {k: self._value(v) for k, v in artifact.custom_properties.items()
                           if k in ("span", "version", "blessed", "pushed_version")}}
        execution = self.producer(artifact_id)
        if execution is not None:
            node["produced_by"] = self.describe_execution(execution)
            node["inputs"] = {key: [self.upstream(a.id) for a in artifacts]
                              for key, artifacts in self.io(execution.id, INPUT_EVENTS).items()
                              if key not in ("baseline_model",)}
        return node

    def run_of(self, execution_id: int) -> str | None:
        """The pipeline run (context) an execution belongs to."""
        run_type = self.store.get_context_type("pipeline_run")
        return next((c.name for c in self.store.get_contexts_by_execution(execution_id)
                     if c.type_id == run_type.id), None)

    def runs(self) -> list[dict]:
        run_type = self.store.get_context_type("pipeline_run")
        result = []
        for context in sorted(self.store.get_contexts_by_type(run_type.name), key=lambda c: c.id):
            executions = self.store.get_executions_by_context(context.id)
            states = defaultdict(int)
            pushed = None
            for execution in executions:
                states[metadata_store_pb2.Execution.State.Name(execution.last_known_state)] += 1
                if self.execution_types[execution.type_id] == "VersionedPusher":
                    for artifact in self.io(execution.id, OUTPUT_EVENTS).get("pushed_model", []):
                        pushed = PushResult.read(artifact.custom_properties).version
            result.append({"run": context.name, "executions": dict(states),
                           "pushed_version": pushed,
                           "started": min((e.create_time_since_epoch for e in executions),
                                          default=0)})
        return result

    def spans_of(self, node: dict) -> set[int]:
        spans = {node["custom"]["span"]} if "span" in node["custom"] else set()
        for artifacts in node.get("inputs", {}).values():
            for child in artifacts:
                spans |= self.spans_of(child)
        return spans

    def models_fed_by_span(self, span: int) -> list[int]:
        """Model artifact ids downstream of ExampleGen output(s) of ``span``."""
        examples = produced_by(self.store, "ImportExampleGen")
        seeds = [a.id for a in self.store.get_artifacts_by_type("Examples")
                 if a.custom_properties.get("span") is not None
                 and a.custom_properties["span"].int_value == span and a.id in examples]
        seen, frontier, models = set(), list(seeds), set()
        while frontier:
            artifact_id = frontier.pop()
            if artifact_id in seen:
                continue
            seen.add(artifact_id)
            consumers = {e.execution_id for e in self.store.get_events_by_artifact_ids(
                [artifact_id]) if e.type in INPUT_EVENTS}
            for execution_id in consumers:
                for key, artifacts in self.io(execution_id, OUTPUT_EVENTS).items():
                    for artifact in artifacts:
                        if key == "model":
                            models.add(artifact.id)
                        elif key not in ("evaluation", "blessing", "pushed_model"):
                            frontier.append(artifact.id)
        return sorted(models)


def version_lineage(config: PipelineConfig, version: int) -> dict:
    entry = next((e for e in serving_dir.read_manifest(config.push_dir)
                  if e["version"] == version), None)
    if entry is None:
        raise KeyError(f"version {version} is not in {config.push_dir}/manifest.json")
    lineage = Lineage(metadata_store(config))
    model = lineage.upstream(entry["model_id"])
    return {"version": version, "manifest": entry, "spans": sorted(lineage.spans_of(model)),
            "run": lineage.run_of(model["produced_by"]["execution_id"]), "model": model}


def span_lineage(config: PipelineConfig, span: int) -> dict:
    lineage = Lineage(metadata_store(config))
    models = lineage.models_fed_by_span(span)
    pushed = defaultdict(list)
    for entry in serving_dir.read_manifest(config.push_dir):
        pushed[entry.get("model_id")].append(entry["version"])
    return {"span": span, "models": [{"model_id": m, "pushed_as": pushed.get(m, [])}
                                     for m in models]}


def _data(fingerprint: str | None) -> str:
    """ExampleGen's input fingerprint in words: files and bytes per split, and a short hash."""
    if not fingerprint:
        return "unknown"
    splits = []
    for line in fingerprint.splitlines():
        fields = dict(f.split(":", 1) for f in line.split(","))
        splits.append(f"{fields['split']} {fields['num_files']} files "
                      f"({int(fields['total_bytes']):,} bytes)")
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:12]
    return ", ".join(splits) + f"; fingerprint {digest}"


def _code(model_uri: str) -> str:
    path = os.path.join(path_utils.serving_model_path(model_uri), CODE_FILE)
    if not os.path.exists(path):
        return "not recorded"
    with open(path) as f:
        code = json.load(f)
    git = (f"git {code['git_commit'][:12]}" + (" with uncommitted changes" if code["git_dirty"]
                                               else "")) if code["git_commit"] else "no git"
    return f"{git}, modules sha256 {code['modules_sha256'][:12]}, package {code['package']}"


def version_summary(result: dict) -> str:
    """What ``version_lineage`` found, in a few lines a person reads."""
    entry, model = result["manifest"], result["model"]
    trainer = json.loads(model["produced_by"]["properties"].get("custom_config") or "{}")
    run = model["produced_by"]["properties"]
    inputs = {key: nodes[0]["uri"] for key, nodes in model.get("inputs", {}).items()}
    epochs = run.get("epochs") or "auto"
    options = (f"{trainer.get('backbone')} {trainer.get('image_height')}x"
               f"{trainer.get('image_width')}x{trainer.get('image_channels')}, "
               f"{trainer.get('num_classes')} classes, "
               + (f"{run['train_steps']} steps" if run.get("train_steps") else
                  f"epochs {epochs}")
               + f", batch {run.get('batch_size')}, learning rate {run.get('learning_rate')}, "
               f"seed {trainer.get('seed')}, augmentation "
               f"{' '.join(trainer.get('augmentation') or []) or 'none'}"
               + (", warm start" if trainer.get("warm_start") else ""))
    baseline = (f"served version {entry['baseline_version']}" if entry.get("baseline_version")
                else "nothing served before (absolute bound only)")
    spans = ", ".join(map(str, result["spans"])) or "none"
    rows = [("data", f"span {spans}: {_data(entry.get('data_fingerprint'))}"),
            ("schema", inputs.get("schema", "?")),
            ("transform", inputs.get("transform_graph", "?")),
            ("code", _code(entry["model_uri"])),
            ("options", options),
            ("result", f"accuracy {entry['accuracy']:.4f}, blessed; baseline: {baseline}"),
            ("model", entry["model_uri"])]
    return "\n".join([f"version {result['version']}, pushed {entry['time']} by run "
                      f"{result['run']}"] + [f"  {name:<10} {text}" for name, text in rows])


def runs_summary(runs: list[dict]) -> str:
    return "\n".join(
        f"run {r['run']}: " + ", ".join(f"{n} {state.lower()}" for state, n in
                                        sorted(r["executions"].items()))
        + (f"; pushed version {r['pushed_version']}" if r["pushed_version"] else "; no push")
        for r in runs) or "no runs recorded"


def span_summary(result: dict) -> str:
    models = [f"  model {m['model_id']}: " + (
        f"pushed as version {', '.join(map(str, m['pushed_as']))}" if m["pushed_as"]
        else "never pushed") for m in result["models"]]
    return "\n".join([f"span {result['span']} fed {len(models)} model(s)"] + models)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.lineage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("runs", "version", "span"))
    parser.add_argument("number", nargs="?", type=int)
    parser.add_argument("--json", action="store_true", help="the full lineage as JSON")
    args, rest = parser.parse_known_args(argv)
    config = PipelineConfig.from_args(rest, prog="python -m ops.lineage")
    if args.what != "runs" and args.number is None:
        parser.error(f"'{args.what}' needs a number")
    try:
        if args.what == "runs":
            result, summary = Lineage(metadata_store(config)).runs(), runs_summary
        elif args.what == "version":
            result, summary = version_lineage(config, args.number), version_summary
        else:
            result, summary = span_lineage(config, args.number), span_summary
    except KeyError as err:
        print(f"lineage: {err.args[0]}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1, default=str) if args.json else summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
