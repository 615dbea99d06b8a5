"""Lineage and a run's push from a real MLMD store holding the records TFX writes for a run
and for its identical rerun (every execution CACHED, linked to the first run's artifacts)."""
from __future__ import annotations

import pytest
import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2 as pb

from domain.contracts import PushResult
from ops import lineage
from domain import mlmd_queries

PIPELINE = "image-classifier"
COMPONENTS = {"ImportExampleGen": "tfx.components.example_gen.import_example_gen.component."
                                  "ImportExampleGen",
              "Trainer": "components.standard.Trainer",
              "VersionedPusher": "components.versioned_pusher.VersionedPusher"}


class Recorder:
    """Writes executions, artifacts, events and contexts the way TFX's launcher does."""

    def __init__(self, path):
        config = pb.ConnectionConfig()
        config.sqlite.filename_uri = str(path)
        config.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
        self.store = mlmd.MetadataStore(config)
        self.types = {name: self.store.put_execution_type(pb.ExecutionType(name=full))
                      for name, full in COMPONENTS.items()}
        self.artifact_types = {name: self.store.put_artifact_type(pb.ArtifactType(name=name))
                               for name in ("Examples", "Model", "ModelRun", "PushedModel")}
        self.context_types = {name: self.store.put_context_type(pb.ContextType(name=name))
                              for name in ("pipeline", "pipeline_run", "node")}
        self.nodes = {}

    def _context(self, kind: str, name: str) -> pb.Context:
        found = self.store.get_context_by_type_and_name(kind, name)
        if found is None:
            self.store.put_contexts([pb.Context(type_id=self.context_types[kind], name=name)])
            found = self.store.get_context_by_type_and_name(kind, name)
        return found

    def artifact(self, kind: str, uri: str, **custom) -> pb.Artifact:
        artifact = pb.Artifact(type_id=self.artifact_types[kind], uri=uri,
                               state=pb.Artifact.LIVE)
        for key, value in custom.items():
            if isinstance(value, str):
                artifact.custom_properties[key].string_value = value
            else:
                artifact.custom_properties[key].int_value = value
        return artifact

    def execute(self, run: str, component: str, inputs: dict, outputs: dict,
                state=pb.Execution.COMPLETE) -> dict:
        """An execution with its events; new artifacts (no id yet) are created."""
        execution = pb.Execution(type_id=self.types[component], last_known_state=state)
        pairs = []
        for kind, by_key in ((pb.Event.INPUT, inputs), (pb.Event.OUTPUT, outputs)):
            for key, artifact in by_key.items():
                event = pb.Event(type=kind)
                event.path.steps.add().key = key
                event.path.steps.add().index = 0
                pairs.append((artifact, event))
        contexts = [self._context(kind, name) for kind, name in (
            ("pipeline", PIPELINE), ("pipeline_run", run), ("node", f"{PIPELINE}.{component}"))]
        _, artifact_ids, _ = self.store.put_execution(execution, pairs, contexts)
        stored = dict(zip([key for by_key in (inputs, outputs) for key in by_key], artifact_ids))
        return {key: self.store.get_artifacts_by_id([i])[0] for key, i in stored.items()}


def _pushed(version: int) -> pb.Artifact:
    artifact = pb.Artifact()
    PushResult(pushed=True, version=version, destination=f"/serving/{version}", record={},
               accuracy=0.9).write(_Setter(artifact))
    return artifact


class _Setter:
    """What ``PushResult.write`` calls, onto a bare MLMD artifact."""

    def __init__(self, artifact):
        self.artifact = artifact

    def set_int_custom_property(self, key, value):
        self.artifact.custom_properties[key].int_value = value

    def set_string_custom_property(self, key, value):
        self.artifact.custom_properties[key].string_value = value

    def set_float_custom_property(self, key, value):
        self.artifact.custom_properties[key].double_value = value


@pytest.fixture
def store(tmp_path):
    """Run 1 trains on span 1 and pushes version 1; run 2 is its identical rerun (all cached);
    run 3 trains on span 2 and pushes version 2."""
    rec = Recorder(tmp_path / "metadata.sqlite")

    def run(name, span, version, state=pb.Execution.COMPLETE, reuse=None):
        new = reuse or {}
        examples = rec.execute(name, "ImportExampleGen", {}, {
            "examples": new.get("examples") or rec.artifact("Examples", f"/ex/{span}", span=span)},
            state)["examples"]
        trained = rec.execute(name, "Trainer", {"examples": examples}, {
            "model": new.get("model") or rec.artifact("Model", f"/model/{name}"),
            "model_run": new.get("model_run") or rec.artifact("ModelRun", f"/logs/{name}")}, state)
        push = new.get("pushed_model")
        if push is None:
            push = _pushed(version)
            push.type_id, push.uri = rec.artifact_types["PushedModel"], f"/pushed/{name}"
        pushed = rec.execute(name, "VersionedPusher", {"model": trained["model"]},
                             {"pushed_model": push}, state)
        return {"examples": examples, **trained, **pushed}

    first = run("run-1", 1, 1)
    run("run-2", 1, 1, pb.Execution.CACHED, reuse=first)
    third = run("run-3", 2, 2)
    return rec.store, first, third


def test_a_cached_rerun_did_not_push(store):
    store, _, _ = store
    runs = lineage.Lineage(store).runs()
    assert [r["pushed_version"] for r in runs] == [1, None, 2]
    assert runs[1]["executions"] == {"CACHED": 3}
    assert "run run-2: 3 cached; no push" in lineage.runs_summary(runs)
    second = store.get_executions_by_context(
        store.get_context_by_type_and_name("pipeline_run", "run-2").id)
    assert mlmd_queries.run_push(store, second) == PushResult(
        pushed=False, reason="already pushed as version 1")
    assert mlmd_queries.run_push(store, []) is None


def test_a_models_lineage_comes_from_its_original_producer(store):
    store, first, third = store
    tree = lineage.Lineage(store).upstream(first["model"].id)
    trainers = [e.id for e in store.get_executions()
                if e.type_id == store.get_execution_type(COMPONENTS["Trainer"]).id]
    assert tree["produced_by"]["component"] == "Trainer"
    assert tree["produced_by"]["execution_id"] == min(trainers)  # not the cache hit
    assert [n["custom"]["span"] for n in tree["inputs"]["examples"]] == [1]
    assert lineage.Lineage(store).spans_of(tree) == {1}
    assert lineage.Lineage(store).run_of(tree["produced_by"]["execution_id"]) == "run-1"
    assert lineage.Lineage(store).spans_of(lineage.Lineage(store).upstream(
        third["model"].id)) == {2}


def test_a_span_fed_the_models_trained_on_it_only(store):
    store, first, third = store
    fed = lineage.Lineage(store)
    assert fed.models_fed_by_span(1) == [first["model"].id]  # not the ModelRun, once
    assert fed.models_fed_by_span(2) == [third["model"].id]
    assert fed.models_fed_by_span(3) == []


def test_mlmd_still_cannot_select_lineage_starting_nodes(store):
    """mlmd_queries.lineage_graph walks events because of this; when it fails, call
    ``store.get_lineage_subgraph`` there instead."""
    store, first, _ = store
    options = pb.LineageSubgraphQueryOptions(max_num_hops=4, direction=mlmd_queries.UPSTREAM)
    options.starting_artifacts.filter_query = f"id = {first['model'].id}"
    with pytest.raises(mlmd.errors.UnimplementedError, match="filter_query is not supported"):
        store.get_lineage_subgraph(options)
