"""Lineage from ML Metadata: ``python -m ops.lineage {runs | version N | span N}``.

* ``runs``: every pipeline run, its executions' states and what it pushed;
* ``version N``: what produced served version N: the data span(s) with file counts and a
  fingerprint, schema, transform graph, code (git commit and dirty flag, a hash of the module
  files, package version), key options, accuracy and gate, the baseline version, its TFLite
  model's figures and the distillation teacher it learnt from (if any);
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
from tfx.utils.path_constants import SERVING_MODEL_DIR

from domain import registry
from domain.features import CODE_FILE
from domain.exported import TEACHER_FILE, TFLITE_SUMMARY, teacher_line, tflite_line
from pipeline.config import PipelineConfig
from domain.mlmd_queries import (DOWNSTREAM, INPUT_EVENTS, OUTPUT_EVENTS, UPSTREAM,
                                   lineage_graph, run_push, value_of)
from domain.mlmd_queries import component_names, metadata_store, produced_by

class Lineage:
    """Reads the MLMD graph of one pipeline: its runs, and the lineage of an artifact."""

    def __init__(self, store):
        self.store = store
        self.execution_types = component_names(store)

    def describe_execution(self, execution) -> dict:
        properties = dict(execution.properties)
        properties.update(execution.custom_properties)  # TFX records exec properties here
        return {"execution_id": execution.id,
                "component": self.execution_types[execution.type_id],
                "properties": {k: value_of(v) for k, v in properties.items()}}

    def upstream(self, artifact_id: int) -> dict:
        """The artifact, its producer (the original when cache hits reused it), and what that
        producer consumed, recursively, from its upstream lineage graph."""
        graph = lineage_graph(self.store, [artifact_id], UPSTREAM)
        artifacts = {a.id: a for a in graph.artifacts}
        executions = {e.id: e for e in graph.executions}
        producers, inputs = defaultdict(list), defaultdict(lambda: defaultdict(list))
        for event in graph.events:
            if event.type in OUTPUT_EVENTS:
                producers[event.artifact_id].append(event.execution_id)
            elif event.type in INPUT_EVENTS:
                inputs[event.execution_id][event.path.steps[0].key].append(event.artifact_id)

        def node(aid: int) -> dict:
            artifact = artifacts[aid]
            found = {"artifact_id": aid, "uri": artifact.uri,
                     "custom": {k: value_of(v) for k, v in artifact.custom_properties.items()
                                if k in ("span", "version", "blessed", "pushed_version")}}
            if producers[aid]:
                execution = executions[min(producers[aid])]
                found["produced_by"] = self.describe_execution(execution)
                found["inputs"] = {key: [node(a) for a in ids]
                                   for key, ids in inputs[execution.id].items()}
            return found
        return node(artifact_id)

    def run_of(self, execution_id: int) -> str | None:
        """The pipeline run (context) an execution belongs to."""
        run_type = self.store.get_context_type("pipeline_run")
        return next((c.name for c in self.store.get_contexts_by_execution(execution_id)
                     if c.type_id == run_type.id), None)

    def input_of(self, run: str | None) -> str | None:
        """How the run chose the model's input and classes (``pipeline.data_shape``), as its
        outcome recorded it on the run's context (``pipeline.rerun``); None if not recorded."""
        run_type = self.store.get_context_type("pipeline_run")
        context = self.store.get_context_by_type_and_name(run_type.name, run) if run else None
        outcome = context.custom_properties["outcome"].string_value if context and \
            "outcome" in context.custom_properties else ""
        return json.loads(outcome).get("input_choice") if outcome else None

    def runs(self) -> list[dict]:
        """Each run: its executions' states, and the version it pushed (None for a run whose
        cached pusher replayed an earlier run's push)."""
        run_type = self.store.get_context_type("pipeline_run")
        result = []
        for context in sorted(self.store.get_contexts_by_type(run_type.name), key=lambda c: c.id):
            executions = self.store.get_executions_by_context(context.id)
            states = defaultdict(int)
            for execution in executions:
                states[metadata_store_pb2.Execution.State.Name(execution.last_known_state)] += 1
            push = run_push(self.store, executions)
            result.append({"run": context.name, "executions": dict(states),
                           "pushed_version": push.version if push and push.pushed else None,
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
        """Ids of the models trained downstream of the ExampleGen output(s) of ``span``."""
        examples = produced_by(self.store, "ImportExampleGen")
        seeds = [a.id for a in self.store.get_artifacts_by_type("Examples")
                 if a.custom_properties.get("span") is not None
                 and a.custom_properties["span"].int_value == span and a.id in examples]
        if not seeds:
            return []
        graph = lineage_graph(self.store, seeds, DOWNSTREAM)
        trained = produced_by(self.store, "Trainer")
        model_type = self.store.get_artifact_type("Model")
        return sorted(a.id for a in graph.artifacts
                      if a.id in trained and a.type_id == model_type.id)


def version_lineage(config: PipelineConfig, version: int) -> dict:
    entry = registry.manifest_entry(config.push_dir, version)
    if entry is None:
        raise KeyError(f"version {version} is not in {config.push_dir}/manifest.json")
    lineage = Lineage(metadata_store(config.metadata_path))
    model = lineage.upstream(entry["model_id"])
    run = lineage.run_of(model["produced_by"]["execution_id"])
    return {"version": version, "manifest": entry, "spans": sorted(lineage.spans_of(model)),
            "run": run, "model": model, "input": lineage.input_of(run),
            "tflite": _trained_json(entry["model_uri"], TFLITE_SUMMARY),
            "teacher": _trained_json(entry["model_uri"], TEACHER_FILE)}


def span_lineage(config: PipelineConfig, span: int) -> dict:
    lineage = Lineage(metadata_store(config.metadata_path))
    models = lineage.models_fed_by_span(span)
    pushed = defaultdict(list)
    for entry in registry.read_manifest(config.push_dir):
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


def _trained_json(model_uri: str, name: str) -> dict | None:
    """A JSON file beside a trained model's SavedModel (a Keras Trainer's layout); None when
    absent."""
    path = os.path.join(model_uri, SERVING_MODEL_DIR, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _code(model_uri: str) -> str:
    code = _trained_json(model_uri, CODE_FILE)
    if code is None:
        return "not recorded"
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
               f"{trainer.get('num_classes')} classes{_names(entry.get('class_names'))}, "
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
            *([("input", result["input"].splitlines()[0])] if result.get("input") else []),
            ("result", f"accuracy {entry['accuracy']:.4f}, blessed; baseline: {baseline}"),
            *([("tflite", tflite_line(result["tflite"]))] if result.get("tflite") else []),
            *([("teacher", teacher_line(result["teacher"]))] if result.get("teacher") else []),
            ("model", entry["model_uri"])]
    return "\n".join([f"version {result['version']}, pushed {entry['time']} by run "
                      f"{result['run']}"] + [f"  {name:<10} {text}" for name, text in rows])


def _names(class_names: list[str] | None, shown: int = 12) -> str:
    """`` (name, name, ...)`` of a version's classes, the first ``shown`` of them."""
    if not class_names:
        return ""
    more = f", ... {len(class_names) - shown} more" if len(class_names) > shown else ""
    return f" ({', '.join(class_names[:shown])}{more})"


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
            result, summary = Lineage(metadata_store(config.metadata_path)).runs(), runs_summary
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
