"""Lineage and a run's push from a real MLMD store holding the records TFX writes for a run
and for its identical rerun (every execution CACHED, linked to the first run's artifacts)."""
from __future__ import annotations

import ml_metadata as mlmd
import pytest
from ml_metadata.proto import metadata_store_pb2 as pb

from domain.contracts import PushResult
from ops import lineage
from domain import mlmd_queries
from tests.mlmd_history import COMPONENTS


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
