"""An MLMD history written the way TFX's launcher writes it (the ``store`` fixture of
conftest.py: three runs, the second an identical rerun of the first)."""
from __future__ import annotations

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2 as pb

from domain.contracts import PushResult

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


def three_runs(path):
    """An MLMD store at ``path``: run 1 trains on span 1 and pushes version 1; run 2 is its
    identical rerun (all cached); run 3 trains on span 2 and pushes version 2. Returns the
    store and the artifacts of runs 1 and 3."""
    rec = Recorder(path)

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
