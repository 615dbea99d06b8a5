"""A first run on a folder of photo-like images with no shape or class option (issue 31): the
input is sized from the data, the run is blessed, and a rerun (also one giving the chosen
values as options) is all cache hits."""
from __future__ import annotations

import json
import os
import sys

import pytest

from domain.mlmd_queries import latest_artifact, metadata_store
from ops.ingest import ingest
from pipeline import local_runner
from pipeline.config import PipelineConfig

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from make_shapes import write_shapes  # noqa: E402

INPUT = ("Input 64×64×3, 3 classes (circle, square, triangle): from the ingest manifest "
         "(median side ")


def test_a_first_run_on_photos_sizes_the_input_from_the_data_and_a_rerun_is_cached(
        tmp_path, capsys):
    write_shapes(str(tmp_path / "photos"), 150, 3, seed=0)
    data = str(tmp_path / "data")
    ingest(str(tmp_path / "photos"), data, shards=1, progress=False)
    argv = ["--data-root", data, "--work-dir", str(tmp_path / "work"), "--train-steps", "1000",
            "--target-accuracy", "0.75", "--validation-percent", "20", "--min-accuracy", "0.6"]
    assert local_runner.main(argv) == 0
    out = capsys.readouterr().out
    assert INPUT in out.split("\n", 2)[1]  # the run's first line after the log's path
    assert "Model BLESSED" in out and "Pushed version 1" in out, out
    config = PipelineConfig.from_args(argv, environ={})
    store = metadata_store(config.metadata_path)
    model = latest_artifact(store, "Model", "Trainer")
    trainer = store.get_executions_by_id([
        e.execution_id for e in store.get_events_by_artifact_ids([model.id])])[0]
    keyed = json.loads(trainer.custom_properties["custom_config"].string_value)
    assert (keyed["image_height"], keyed["image_width"], keyed["image_channels"],
            keyed["num_classes"], keyed["class_names"]) == (64, 64, 3, 3,
                                                            ["circle", "square", "triangle"])
    report = out.rsplit("Run report: ", 1)[1].strip()
    assert INPUT in open(report, encoding="utf-8").read()
    assert local_runner.main(argv) == 0  # the same data: every component from the cache
    again = capsys.readouterr().out
    assert INPUT in again and "every component served from cache" in again, again
    # The options it chose, given explicitly, are the same run: the same cache keys.
    assert local_runner.main(argv + ["--image-height", "64", "--image-width", "64",
                                     "--image-channels", "3", "--num-classes", "3"]) == 0
    explicit = capsys.readouterr().out
    assert "as the options set them" in explicit
    assert "every component served from cache" in explicit, explicit
