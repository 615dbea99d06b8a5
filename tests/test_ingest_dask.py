"""ops.ingest on a real two-worker Dask cluster on loopback: the same records, shard by shard
and in order, and the same manifest as on the DirectRunner."""
from __future__ import annotations

import os

import numpy as np
import pytest

from ops import ingest
from tests.test_ingest import _tree
from tools.dask_cluster import loopback_cluster

pytestmark = pytest.mark.e2e  # server processes: a scheduler and two workers


def _files(root: str) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(folder, name), root): open(
        os.path.join(folder, name), "rb").read()
        for folder, _, names in os.walk(root) for name in names}


def test_ingest_on_dask_writes_what_the_direct_runner_writes(tmp_path):
    _tree(str(tmp_path / "images"), np.random.default_rng(8))
    kwargs = dict(shards=2, compress=True, span=3, eval_fraction=0.3, max_skipped_fraction=0.3,
                  progress=False)
    direct = ingest.ingest(str(tmp_path / "images"), str(tmp_path / "direct"), **kwargs)
    with loopback_cluster() as address:
        dask = ingest.ingest(str(tmp_path / "images"), str(tmp_path / "dask"), engine="dask",
                             dask_address=address, **kwargs)
    assert {**dask, "root": None} == {**direct, "root": None}
    written = {name: _files(str(tmp_path / name / "span-3")) for name in ("direct", "dask")}
    assert written["dask"].pop("manifest.json") != b""
    written["direct"].pop("manifest.json")
    assert written["dask"] == written["direct"]
    assert sorted(written["dask"]) == [f"{split}/data-{i:05d}-of-00002.tfrecord.gz"
                                       for split in ("eval", "train") for i in range(2)]


def test_engine_options_are_checked_in_one_line(tmp_path, capsys):
    _tree(str(tmp_path / "images"), np.random.default_rng(9))
    for args, message in [(["--engine", "dask"], "--engine dask and --dask-address"),
                          (["--engine", "dask", "--dask-address", "localhost:8786"],
                           "--dask-address must be tcp://HOST:PORT")]:
        assert ingest.main([str(tmp_path / "images"), str(tmp_path / "out"), *args]) == 2
        assert capsys.readouterr().err.startswith(f"ingest: FAILED: {message}")
    assert not os.path.exists(tmp_path / "out")
