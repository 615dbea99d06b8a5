"""A cache hit recorded as TFX's LocalDagRunner records one, without TFX: the identical-rerun
check's one coupling to how TFX writes MLMD and logs a run.

LocalDagRunner starts a run with a ``pipeline_run`` context named by the time
(``datetime.now().isoformat()``). Each cache hit is a ``CACHED`` execution named by a uuid,
with the component's execution properties, in the run's contexts (the pipeline, the node, the
cache key's ``execution_cache`` and the run), with the input events of its inputs and output
events to the cached artifacts (``launcher.Launcher``, ``execution_publish_utils.
publish_cached_executions``); the runner logs ``Component <id> is running.`` and ``... is
finished.`` around it. tests/test_tfx_fences.py runs a tiny pipeline twice with a real
LocalDagRunner and fails, naming those TFX functions, when its cache hit differs from one
recorded here.
"""
from __future__ import annotations

import datetime
import uuid

from domain.mlmd_queries import NODE_CONTEXT

RUN_CONTEXT = "pipeline_run"  # TFX's MLMD context of one pipeline run


def new_run(store, run_type_id: int):
    """A new ``pipeline_run`` context, named as LocalDagRunner names one."""
    from ml_metadata.proto import metadata_store_pb2
    run = metadata_store_pb2.Context(type_id=run_type_id,
                                     name=datetime.datetime.now().isoformat())
    [run.id] = store.put_contexts([run])
    return run


def record_cache_hit(store, execution, events, artifacts: dict, run) -> int:
    """Records in ``run`` a cache hit of ``execution`` (its type, properties, contexts but its
    run, input and output artifacts, from ``events`` and ``artifacts`` by id), between the two
    log lines LocalDagRunner writes around a component; returns the new execution's id."""
    import absl.logging
    from ml_metadata.proto import metadata_store_pb2

    from pipeline.progress import FINISHED, STARTED
    contexts = [c for c in store.get_contexts_by_execution(execution.id)
                if c.type_id != run.type_id]
    node_type = store.get_context_type(NODE_CONTEXT).id
    node = next(c.name for c in contexts if c.type_id == node_type).rsplit(".", 1)[-1]
    absl.logging.info(STARTED, node)
    copy = metadata_store_pb2.Execution(
        type_id=execution.type_id, name=str(uuid.uuid4()),
        last_known_state=metadata_store_pb2.Execution.CACHED)
    copy.properties.MergeFrom(execution.properties)
    copy.custom_properties.MergeFrom(execution.custom_properties)
    links = [(artifacts[e.artifact_id], metadata_store_pb2.Event(type=e.type, path=e.path))
             for e in events if e.execution_id == execution.id]
    copy_id = store.put_execution(copy, links, contexts + [run])[0]
    absl.logging.info(FINISHED, node)
    return copy_id
