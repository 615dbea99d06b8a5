"""Operator commands import only what they need: no TensorFlow, TFX executors, TFMA or Beam
(seconds of start-up and C++ log lines) for help texts, metadata or label commands, and the
preflight's one-line errors."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

HEAVY = ("tensorflow", "tensorflow_model_analysis", "apache_beam", "tensorflow_transform")
PROBE = """
import runpy, sys
sys.argv = [{module!r}, *{args!r}]
try:
    runpy.run_module({module!r}, run_name="__main__")
except SystemExit:
    pass
print(sorted(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize("module", ["ops.lineage", "ops.labels", "ops.rollback",
                                    "ops.schedule", "ops.predict", "ops.ingest",
                                    "pipeline.local_runner", "pipeline.kubeflow_runner"])
def test_help_imports_no_training_stack_and_prints_no_library_noise(module):
    done = subprocess.run([sys.executable, "-c", PROBE.format(module=module, args=["--help"],
                                                              heavy=HEAVY)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-300:]
    assert done.stderr == ""


def test_a_preflight_error_comes_before_the_training_stack(tmp_path):
    """A data root that is no directory: one line, exit 2, and nothing heavy imported."""
    probe = PROBE.format(module="pipeline.local_runner", heavy=HEAVY, args=[
        "--work-dir", str(tmp_path), "--data-root", str(tmp_path / "missing")])
    done = subprocess.run([sys.executable, "-c", probe.replace(
        "except SystemExit:\n    pass", "except SystemExit as exit:\n    print(exit.code)")],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout.strip().splitlines()[-2:] == ["2", "[]"], done.stdout[-300:]
    assert done.stderr.startswith(f"error: --data-root {tmp_path / 'missing'} is not a "
                                  "directory") and len(done.stderr.splitlines()) == 1
