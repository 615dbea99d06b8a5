"""Questions asked of ML Metadata about one run or one artifact's lineage, answered once.

``run_push`` says what a run's pusher did (a CACHED pusher replayed an earlier run's push and
pushed nothing itself); ``latest_execution`` finds a pipeline node's newest execution;
``lineage_graph`` answers what MLMD's ``get_lineage_subgraph`` would: the subgraph upstream or
downstream of some artifacts.
"""
from __future__ import annotations

import os

from ml_metadata.proto import metadata_store_pb2

from domain.contracts import PushResult

INPUT_EVENTS = (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT)
OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
NODE_CONTEXT = "node"  # TFX's MLMD context of a pipeline node, named <pipeline>.<node id>
UPSTREAM = metadata_store_pb2.LineageSubgraphQueryOptions.UPSTREAM
DOWNSTREAM = metadata_store_pb2.LineageSubgraphQueryOptions.DOWNSTREAM


def value_of(value: metadata_store_pb2.Value):
    """An MLMD property value as Python (None when unset)."""
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def run_push(store, executions) -> PushResult | None:
    """What the pusher among ``executions`` (one run's) did, read from its PushedModel; None
    when none of them output one. A CACHED pusher's PushedModel is the record of the
    identical earlier run it replayed: this run pushed nothing ("already pushed as ...")."""
    by_id = {e.id: e for e in executions}
    producer = {event.artifact_id: event.execution_id
                for event in (store.get_events_by_execution_ids(list(by_id)) if by_id else [])
                if event.type in OUTPUT_EVENTS}
    types = {t.id: t.name for t in store.get_artifact_types()}
    pushed = [a for a in (store.get_artifacts_by_id(list(producer)) if producer else [])
              if types[a.type_id] == "PushedModel"]
    if not pushed:
        return None
    artifact = max(pushed, key=lambda a: a.id)
    push = PushResult.read(artifact.custom_properties)
    if push.pushed and by_id[producer[artifact.id]].last_known_state == \
            metadata_store_pb2.Execution.CACHED:
        return PushResult(pushed=False, reason=f"already pushed as version {push.version}")
    return push


def lineage_graph(store, artifact_ids: list[int], direction) -> metadata_store_pb2.LineageGraph:
    """The artifacts, executions and events ``direction`` (UPSTREAM: producers and what they
    consumed; DOWNSTREAM: consumers and what they output) of ``artifact_ids``, transitively.

    MLMD's ``get_lineage_subgraph`` answers this in one call, but it selects its starting
    artifacts only by ``filter_query``, which the ml-metadata 1.21 wheels refuse (built without
    ZetaSQL; tests/test_lineage.py notices when that changes): so one pair of batched queries
    per hop instead."""
    toward, onward = ((OUTPUT_EVENTS, INPUT_EVENTS) if direction == UPSTREAM
                      else (INPUT_EVENTS, OUTPUT_EVENTS))
    artifacts, executions, frontier = set(), set(), set(artifact_ids)
    while frontier:
        artifacts |= frontier
        step = {e.execution_id for e in store.get_events_by_artifact_ids(list(frontier))
                if e.type in toward} - executions
        executions |= step
        frontier = {e.artifact_id for e in (store.get_events_by_execution_ids(list(step))
                                            if step else []) if e.type in onward} - artifacts
    graph = metadata_store_pb2.LineageGraph()
    graph.artifacts.extend(store.get_artifacts_by_id(sorted(artifacts)))
    if executions:
        graph.executions.extend(store.get_executions_by_id(sorted(executions)))
        graph.events.extend(e for e in store.get_events_by_execution_ids(sorted(executions))
                            if e.artifact_id in artifacts)
    return graph


def latest_execution(store, pipeline_name: str, node_id: str):
    """The newest execution of the pipeline node ``node_id`` (through TFX's node context,
    ``<pipeline>.<node id>``), or None."""
    context = store.get_context_by_type_and_name(NODE_CONTEXT, f"{pipeline_name}.{node_id}")
    executions = store.get_executions_by_context(context.id) if context else []
    return max(executions, key=lambda e: e.id, default=None)


def metadata_store(path: str, writable: bool = False):
    """The MLMD of the SQLite file ``path`` (read-only unless ``writable``)."""
    import ml_metadata as mlmd
    modes = metadata_store_pb2.SqliteMetadataSourceConfig
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = path
    connection.sqlite.connection_mode = modes.READWRITE if writable else modes.READONLY
    return mlmd.MetadataStore(connection)


def component_names(store) -> dict[int, str]:
    """Execution type id -> component class name (``Trainer``, ``ServedModel``, ...)."""
    return {t.id: t.name.rsplit(".", 1)[-1] for t in store.get_execution_types()}


def executions_since(store, since_execution_id: int = 0) -> list[tuple[str, object]]:
    """``(component, execution)`` for the executions after ``since_execution_id``, in order."""
    types = component_names(store)
    return [(types[e.type_id], e) for e in store.get_executions() if e.id > since_execution_id]


def seconds(execution) -> float:
    """An execution's wall time as MLMD recorded it."""
    return (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1e3


def produced_by(store, producer: str) -> set[int]:
    """Ids of the artifacts the component ``producer`` (its node id) output: found through its
    MLMD node context, its executions and their OUTPUT events."""
    executions = [e for context in store.get_contexts_by_type(NODE_CONTEXT)
                  if context.name.rsplit(".", 1)[-1] == producer
                  for e in store.get_executions_by_context(context.id)]
    events = store.get_events_by_execution_ids([e.id for e in executions]) if executions else []
    return {e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT}


def run_outputs(store, since_execution_id: int) -> set[int]:
    """Ids of the artifacts output by the executions after ``since_execution_id`` (a cache
    hit's included: TFX links it to the artifacts it reuses)."""
    executions = [e.id for e in store.get_executions() if e.id > since_execution_id]
    return {e.artifact_id for e in store.get_events_by_execution_ids(executions)
            if e.type == metadata_store_pb2.Event.OUTPUT} if executions else set()


def latest_artifact(store, type_name: str, producer: str = "", among: set[int] | None = None):
    """The newest artifact of a type (output by ``producer``'s component, if given; among the
    ids ``among``, if given), or None."""
    found = store.get_artifacts_by_type(type_name)
    if producer:
        ids = produced_by(store, producer)
        found = [a for a in found if a.id in ids]
    if among is not None:
        found = [a for a in found if a.id in among]
    return max(found, key=lambda a: a.id) if found else None


def last_execution_id(path: str) -> int:
    """The newest execution's id in the MLMD at ``path`` (0 before the first run)."""
    if not os.path.exists(path):
        return 0
    return max((e.id for e in metadata_store(path).get_executions()), default=0)
