"""pipeline/dask_runner.py: each fix of Beam's DaskRunner against the DirectRunner's semantics,
on a real two-worker cluster on loopback. Every pipeline writes its outputs as files (a real
side effect, visible only if the branch ran), read back after the run."""
from __future__ import annotations

import os
import sys
import uuid

import apache_beam as beam
import cloudpickle
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.dask_runner import DaskClusterTimeout, DaskRunner
from tools.dask_cluster import loopback_cluster

pytestmark = pytest.mark.e2e  # server processes: a scheduler and two workers

# the scheduler and the workers cannot import a test module: its functions travel by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def address(dask_cluster):
    return dask_cluster


def _record(value, folder: str) -> None:
    """A sink without Beam's sink machinery: one file per element, named by the element."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, uuid.uuid4().hex), "w") as out:
        out.write(repr(value))


def _recorded(folder: str) -> list:
    if not os.path.isdir(folder):
        return []
    return sorted(eval(open(os.path.join(folder, f)).read()) for f in os.listdir(folder))


def _run(build, folder, address=None, partitions=3) -> dict:
    """Run ``build(pipeline, folder)`` on the DirectRunner or on Dask; its outputs by sink."""
    if address is None:
        runner, options = "DirectRunner", PipelineOptions()
    else:
        runner, options = DaskRunner(), PipelineOptions([
            f"--dask_client_address={address}", f"--dask_npartitions={partitions}",
            "--dask_run_timeout=120"])
    with beam.Pipeline(runner=runner, options=options) as pipeline:
        build(pipeline, str(folder))
    return {name: _recorded(os.path.join(folder, name)) for name in sorted(os.listdir(folder))}


def _same_on_both(build, tmp_path, address, **kwargs) -> dict:
    direct = _run(build, tmp_path / "direct")
    assert _run(build, tmp_path / "dask", address, **kwargs) == direct
    return direct


def test_every_sink_branch_is_computed(tmp_path, address):
    def build(pipeline, out):
        numbers = pipeline | beam.Create(range(6))
        numbers | "a" >> beam.Map(_record, f"{out}/a")
        numbers | "double" >> beam.Map(lambda x: 2 * x) | "b" >> beam.Map(_record, f"{out}/b")
    assert _same_on_both(build, tmp_path, address) == {
        "a": list(range(6)), "b": [0, 2, 4, 6, 8, 10]}


def test_batch_elements_keeps_the_last_batch(tmp_path, address):
    def build(pipeline, out):
        (pipeline | beam.Create(range(10))
         | beam.BatchElements(min_batch_size=4, max_batch_size=4)
         | beam.Map(lambda batch: sorted(batch)) | beam.Map(_record, f"{out}/batches"))
    batches = _same_on_both(build, tmp_path, address, partitions=1)["batches"]
    assert sorted(x for batch in batches for x in batch) == list(range(10))
    assert sorted(map(len, batches)) == [2, 4, 4]


def _by_parity(x):
    yield x if x % 2 == 0 else beam.pvalue.TaggedOutput("odd", x)


def test_tagged_outputs_stay_apart(tmp_path, address):
    def build(pipeline, out):
        split = pipeline | beam.Create(range(8)) | beam.FlatMap(_by_parity).with_outputs(
            "odd", main="even")
        split.even | "even" >> beam.Map(_record, f"{out}/even")
        split.odd | "odd" >> beam.Map(_record, f"{out}/odd")
    assert _same_on_both(build, tmp_path, address) == {"even": [0, 2, 4, 6], "odd": [1, 3, 5, 7]}


def test_a_side_input_is_computed_once(tmp_path, address):
    def build(pipeline, out):
        token = pipeline | "token" >> beam.Create([None]) | beam.Map(lambda _: uuid.uuid4().hex)
        (pipeline | beam.Create(range(12))
         | beam.Map(lambda x, t: t, beam.pvalue.AsSingleton(token))
         | beam.Map(_record, f"{out}/tokens"))
    for runner in ("direct", "dask"):
        tokens = _run(build, tmp_path / runner, None if runner == "direct" else address,
                      )["tokens"]
        assert len(tokens) == 12 and len(set(tokens)) == 1, runner


def test_read_reads_every_split_of_a_source(tmp_path, address):
    lines = [f"file{f}-line{n}" for f in range(3) for n in range(50)]
    for f in range(3):
        (tmp_path / f"in-{f}.txt").write_text("\n".join(lines[f * 50:(f + 1) * 50]) + "\n")

    def build(pipeline, out):
        (pipeline | beam.io.ReadFromText(str(tmp_path / "in-*.txt"))
         | beam.Map(_record, f"{out}/lines"))
    assert _same_on_both(build, tmp_path, address)["lines"] == sorted(lines)


def test_beams_file_sink_writes_every_record(tmp_path, address):
    """WriteToText needs fixes 3, 4 and 5 together: write results come from finish_bundle, the
    finalize branch is a leaf, and the temp dir is a side input."""
    with beam.Pipeline(runner=DaskRunner(), options=PipelineOptions(
            [f"--dask_client_address={address}", "--dask_npartitions=3"])) as pipeline:
        (pipeline | beam.Create([str(x) for x in range(30)])
         | beam.io.WriteToText(str(tmp_path / "out"), num_shards=2))
    shards = sorted(p for p in os.listdir(tmp_path) if p.startswith("out"))
    assert len(shards) == 2
    assert sorted(int(line) for s in shards for line in open(tmp_path / s)) == list(range(30))


def test_a_file_sinks_shards_hold_the_bundles_in_order(tmp_path, address):
    """Fix 7: shard i is the i-th bundle (the stock runner numbers them by random temp names:
    6 bundles came in order once in 720 runs)."""
    with beam.Pipeline(runner=DaskRunner(), options=PipelineOptions(
            [f"--dask_client_address={address}", "--dask_npartitions=6"])) as pipeline:
        pipeline | beam.Create([str(x) for x in range(60)]) | beam.io.WriteToText(
            str(tmp_path / "out"))
    shards = sorted(p for p in os.listdir(tmp_path) if p.startswith("out"))
    assert len(shards) == 6
    assert [int(line) for s in shards for line in open(tmp_path / s)] == list(range(60))


def test_the_client_is_closed_when_the_run_ends(tmp_path, address):
    pipeline = beam.Pipeline(runner=DaskRunner(), options=PipelineOptions(
        [f"--dask_client_address={address}"]))
    pipeline | beam.Create([1, 2]) | beam.Map(_record, str(tmp_path / "out"))
    result = pipeline.run()
    assert result.wait_until_finish() == "DONE" and result.client.status == "closed"
    assert _recorded(str(tmp_path / "out")) == [1, 2]


def test_a_cluster_that_runs_nothing_is_a_timeout_error_not_a_wait(tmp_path):
    with loopback_cluster(workers=0) as no_workers:
        pipeline = beam.Pipeline(runner=DaskRunner(), options=PipelineOptions(
            [f"--dask_client_address={no_workers}", "--dask_run_timeout=3"]))
        pipeline | beam.Create([1]) | beam.Map(_record, str(tmp_path / "out"))
        result = pipeline.run()
        with pytest.raises(DaskClusterTimeout, match=r"did not finish .* within 3 s"):
            result.wait_until_finish()
        assert result.client.status == "closed"


def test_group_by_key_shuffles_through_the_cluster_not_a_workers_disk(tmp_path, address):
    def build(pipeline, out):
        (pipeline | beam.Create(range(200)) | beam.Map(lambda x: (x % 10, x))
         | beam.GroupByKey() | beam.MapTuple(lambda key, values: (key, sorted(values)))
         | beam.Map(_record, f"{out}/groups"))
    groups = _same_on_both(build, tmp_path, address, partitions=8)["groups"]
    assert [key for key, _ in groups] == list(range(10))
    # on loopback a disk shuffle's files are shared by the workers: the graph tells the method
    pipeline = beam.Pipeline(runner=DaskRunner())
    build(pipeline, str(tmp_path / "graph"))
    names = [key[0] if isinstance(key, tuple) else key
             for bag in DaskRunner.leaves(pipeline, {}) for key in bag.dask]
    assert any(name.startswith("shuffle-") for name in names)
    assert not any(name.startswith("partd-") for name in names)
