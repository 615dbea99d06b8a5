"""Fences around the two places the project depends on how TFX works inside, not on its API:

* ``pipeline.tfx_cache_record`` records a cache hit as LocalDagRunner does (the identical
  rerun): a tiny pipeline is run twice by a real LocalDagRunner, and its real cache hits are
  compared with those recorded by the adapter;
* ``pipeline.tfx_entrypoint`` swaps two functions of TFX's v2 container entrypoint and calls
  its private flag parser: their signatures, and a real executor run through the hooks.

Each failure names the TFX function whose behaviour changed. (No ``from __future__ import
annotations``: TFX reads the components' annotations at run time.)
"""
import datetime
import inspect
import json
import logging
import os

import pytest
from tfx import v1 as tfx
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.components.base import base_executor
from tfx.types import standard_artifacts

from domain.mlmd_queries import NODE_CONTEXT
from pipeline import tfx_cache_record, tfx_entrypoint
from pipeline.pipeline import CODE_SHA256
from pipeline.progress import FINISHED, STARTED

CACHE_HIT = ("TFX's cache hit (tfx.orchestration.portable.launcher.Launcher, "
             "execution_publish_utils.publish_cached_executions, LocalDagRunner.run)")


@component
def Make(examples: OutputArtifact[standard_artifacts.Examples], size: Parameter[int]) -> None:
    os.makedirs(examples.uri, exist_ok=True)
    with open(os.path.join(examples.uri, "data"), "w") as f:
        f.write("x" * size)


@component
def Use(examples: InputArtifact[standard_artifacts.Examples],
        model: OutputArtifact[standard_artifacts.Model]) -> None:
    os.makedirs(model.uri, exist_ok=True)


def _run_tiny_pipeline(root, code: str = "v1") -> None:
    make = Make(size=3)
    make.exec_properties[CODE_SHA256] = code  # as create_pipeline keys custom components
    use = Use(examples=make.outputs["examples"])
    tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
        pipeline_name="tiny", pipeline_root=str(root / "pipeline"), components=[make, use],
        enable_cache=True, metadata_connection_config=tfx.orchestration.metadata
        .sqlite_metadata_connection_config(str(root / "metadata.db"))))


class _Lines(logging.Handler):
    """The component lines (``pipeline.progress``'s STARTED, FINISHED) logged meanwhile."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        if record.msg in (STARTED, FINISHED):
            self.lines.append(record.getMessage())


def _logged(action) -> list[str]:
    handler, logger = _Lines(), logging.getLogger("absl")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        action()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return handler.lines


def _shape(store, execution) -> dict:
    """What a cache hit is made of, but its ids, name and run context."""
    contexts = store.get_contexts_by_execution(execution.id)
    run_type = store.get_context_type(tfx_cache_record.RUN_CONTEXT).id
    events = store.get_events_by_execution_ids([execution.id])
    return {"type_id": execution.type_id, "state": execution.last_known_state,
            "properties": dict(execution.properties),
            "custom_properties": dict(execution.custom_properties),
            "contexts": sorted((c.type_id, c.name) for c in contexts if c.type_id != run_type),
            "runs": len([c for c in contexts if c.type_id == run_type]),
            "events": sorted((e.artifact_id, e.type, e.path.SerializeToString())
                             for e in events)}


def _is_time(name: str) -> bool:
    try:
        return datetime.datetime.fromisoformat(name).year > 2000
    except ValueError:
        return False


def test_a_recorded_cache_hit_is_the_one_localdagrunner_records(tmp_path):
    import ml_metadata as mlmd
    _run_tiny_pipeline(tmp_path)
    real_lines = _logged(lambda: _run_tiny_pipeline(tmp_path))  # every component cached
    store = mlmd.MetadataStore(tfx.orchestration.metadata.sqlite_metadata_connection_config(
        str(tmp_path / "metadata.db")))
    run_type = store.get_context_type(tfx_cache_record.RUN_CONTEXT)
    assert run_type is not None and store.get_context_type(NODE_CONTEXT) is not None, \
        f"{CACHE_HIT} no longer records the contexts {tfx_cache_record.RUN_CONTEXT!r} and " \
        f"{NODE_CONTEXT!r}"
    first, second = sorted(store.get_contexts_by_type(tfx_cache_record.RUN_CONTEXT),
                           key=lambda c: c.id)
    completed = sorted(store.get_executions_by_context(first.id), key=lambda e: e.id)
    real = sorted(store.get_executions_by_context(second.id), key=lambda e: e.id)
    events = store.get_events_by_execution_ids([e.id for e in completed])
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}

    def replay():
        run = tfx_cache_record.new_run(store, run_type.id)
        return run, [tfx_cache_record.record_cache_hit(store, e, events, artifacts, run)
                     for e in completed]

    replayed = []
    replayed_lines = _logged(lambda: replayed.extend(replay()))
    run, copies = replayed
    assert [_shape(store, e) for e in store.get_executions_by_id(copies)] == \
        [_shape(store, e) for e in real], f"{CACHE_HIT} records a cache hit otherwise"
    assert replayed_lines == real_lines and len(real_lines) == 4, \
        f"LocalDagRunner.run logs its components otherwise: {real_lines}"
    assert _is_time(second.name) and _is_time(run.name), \
        f"LocalDagRunner names its {tfx_cache_record.RUN_CONTEXT} otherwise: {second.name}"
    assert all(len(e.name) == 36 for e in real), f"{CACHE_HIT} names executions otherwise"


def test_a_new_code_hash_reruns_the_component(tmp_path):
    """``create_pipeline`` keys a custom component's cache by its code (``CODE_SHA256``, an
    execution property): TFX's cache key must cover execution properties."""
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2
    for code in ("v1", "v1", "v2"):
        _run_tiny_pipeline(tmp_path, code)
    store = mlmd.MetadataStore(tfx.orchestration.metadata.sqlite_metadata_connection_config(
        str(tmp_path / "metadata.db")))
    states = [e.last_known_state for e in sorted(store.get_executions(), key=lambda e: e.id)]
    complete, cached = metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED
    # v2: Make reruns, and so does Use, on Make's new output
    assert states == [complete, complete, cached, cached, complete, complete], \
        "TFX's cache key (tfx.orchestration.portable.cache_utils.get_cache_context) no " \
        f"longer follows a component's execution properties: states {states}"


class _Touch(base_executor.BaseExecutor):
    """Writes a file into its one output artifact."""

    def Do(self, input_dict, output_dict, exec_properties):  # noqa: N802 - TFX's name
        [model] = output_dict["model"]
        os.makedirs(model.uri, exist_ok=True)
        with open(os.path.join(model.uri, "touched"), "w") as f:
            f.write(json.dumps(exec_properties))


@pytest.mark.parametrize("module, function, parameters", [
    ("kubeflow_v2_entrypoint_utils", "parse_raw_artifact_dict", ["inputs_dict", "name_from_id"]),
    ("kubeflow_v2_entrypoint_utils", "translate_executor_output",
     ["output_dict", "name_from_id"]),
    ("kubeflow_v2_run_executor", "main", ["parsed_argv"]),
    ("kubeflow_v2_run_executor", "_parse_flags", ["argv"]),
])
def test_the_entrypoint_functions_the_adapter_uses_exist(module, function, parameters):
    import importlib
    found = getattr(importlib.import_module(
        f"tfx.orchestration.kubeflow.v2.container.{module}"), function, None)
    assert found is not None and list(inspect.signature(found).parameters) == parameters, \
        f"TFX's {module}.{function} is gone or no longer takes {parameters}: " \
        "pipeline.tfx_entrypoint needs it"


def test_the_entrypoint_reads_and_writes_artifacts_through_the_hooks(tmp_path):
    argv = ["--executor_class_path", f"{__name__}._Touch", "--json_serialized_invocation_args",
            json.dumps({
                "inputs": {"artifacts": {"examples": {"artifacts": [{
                    "name": "examples", "uri": str(tmp_path / "in"),
                    "type": {"schemaTitle": "tfx.Examples"}}]}},
                    "parameterValues": {"size": 3}},
                "outputs": {"artifacts": {"model": {"artifacts": [{
                    "name": "model", "uri": str(tmp_path / "out"),
                    "type": {"schemaTitle": "tfx.Model"}}]}},
                    "outputFile": str(tmp_path / "task" / "executor_output.json")}}),
            "--json_serialized_inputs_spec_args", json.dumps({
                "parameters": {"size": {"parameterType": "NUMBER_INTEGER"}}}),
            "--runner=DirectRunner"]
    args, beam_args = tfx_entrypoint.parse_flags(["entrypoint", *argv])
    assert args.executor_class_path.endswith("_Touch") and beam_args[1:] == \
        ["--runner=DirectRunner"], "TFX's kubeflow_v2_run_executor._parse_flags parses otherwise"
    seen = {"parsed": [], "translated": []}
    tfx_entrypoint.run_executor(
        args, beam_args, lambda artifacts: seen["parsed"].append(sorted(artifacts)),
        lambda result, outputs: seen["translated"].append((sorted(result), sorted(outputs))))
    assert seen == {"parsed": [["examples"], ["model"]],
                    "translated": [(["model"], ["model"])]}, \
        "TFX's kubeflow_v2_run_executor._run_executor no longer reads artifacts through " \
        "kubeflow_v2_entrypoint_utils.parse_raw_artifact_dict and writes them through " \
        f"translate_executor_output: {seen}"
    assert os.path.exists(tmp_path / "out" / "touched")
    output = json.loads((tmp_path / "task" / "executor_output.json").read_text())
    assert output["artifacts"]["model"]["artifacts"][0]["uri"] == str(tmp_path / "out")
