"""A whole run whose pipeline root is TensorFlow's ``ram://``, standing in for ``gs://``.

No POSIX path for TensorFlow, TFX or Beam (``tests/beam_ram_filesystem`` registers it with
Beam): every access to an artifact URI must go through TFX's file I/O, and the run report is
written locally. The run trains, gates, pushes a version that predicts, and reports.
"""
from __future__ import annotations

import os

import pytest
import tensorflow as tf

from pipeline import config as config_module
from pipeline import local_runner
from pipeline.config import PipelineConfig

ROOT = "ram://tfx-root/image-classifier"


@pytest.fixture
def ram_root(monkeypatch):
    import tests.beam_ram_filesystem  # noqa: F401  (registers ram:// with Beam)
    monkeypatch.setattr(config_module, "OBJECT_STORES", config_module.OBJECT_STORES + ("ram",))
    return ROOT  # freed with the process


def test_a_run_on_a_non_posix_root_trains_gates_pushes_and_reports(ram_root, tmp_path):
    config = PipelineConfig.from_args([
        "--work-dir", str(tmp_path), "--pipeline-root", ram_root, "--train-steps", "60",
        "--eval-steps", "5", "--min-accuracy", "0"],
        environ={})
    outcome = local_runner.run(config)
    assert outcome.pushed and outcome.pushed_version == 1, outcome
    for component in ("ImportExampleGen", "Transform", "Trainer", "Evaluator", "AnomalyGate"):
        assert tf.io.gfile.exists(f"{ram_root}/{component}"), component
    assert not any("ram:" in name for _, dirs, _ in os.walk(tmp_path) for name in dirs)
    assert not os.path.exists("ram:")  # nothing took the URI for a local folder
    assert outcome.report.startswith(str(tmp_path)) and os.path.getsize(outcome.report) > 10_000
    html = open(outcome.report, encoding="utf-8").read()
    assert "Undecodable images dropped: 0" in html and "<svg" in html
    model = tf.saved_model.load(os.path.join(config.push_dir, "1"))
    assert "serving_default" in model.signatures
