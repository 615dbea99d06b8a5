"""Operator commands import only what they need: no TensorFlow, TFX executors, TFMA or Beam
(seconds of start-up and C++ log lines) for help texts, metadata or label commands, and the
preflight's one-line errors."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.helpers import HEAVY, PROBE

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


def _probe(module: str, args: list[str]) -> subprocess.CompletedProcess:
    """``module`` run with ``args`` in a fresh process; prints its exit code, then the heavy
    modules it imported."""
    return subprocess.run([sys.executable, "-c", PROBE.format(
        module=module, args=args, heavy=HEAVY).replace(
        "except SystemExit:\n    pass", "except SystemExit as exit:\n    print(exit.code)")],
        capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_operator_commands_in_use_import_no_training_stack_and_print_no_library_noise(
        tmp_path, store):
    """Lineage of a recorded history, a rollback, every label action, and a schedule sent to
    a KFP API: exit 0, nothing on stderr, no TensorFlow, TFX executors, TFMA or Beam."""
    from domain import registry
    from tests.kfp_contract_server import KfpContractServer

    push = str(tmp_path / "serving" / "model")
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"a model")
    for _ in range(2):
        registry.publish(str(model), push, {"action": "push"}, keep=5)
    package = tmp_path / "package.yaml"
    package.write_text("root:\n  inputDefinitions:\n    parameters:\n      train_steps:\n"
                       "        parameterType: NUMBER_INTEGER\n        defaultValue: 100\n")
    metadata = ["--metadata-path", str(tmp_path / "metadata.sqlite")]
    with KfpContractServer() as kfp:
        commands = [("ops.lineage", ["runs", *metadata]), ("ops.lineage", ["span", "1", *metadata]),
                    ("ops.rollback", ["--push-dir", push, "--to-version", "1", "--reason", "r"]),
                    *[("ops.labels", ["--push-dir", push, *action]) for action in (
                        ["show"], ["canary", "--version", "2", "--weight", "0.1"],
                        ["compare", "--feedback-dir", str(tmp_path / "feedback")], ["promote"],
                        ["canary", "--version", "3", "--weight", "0.1"], ["rollback"])],
                    ("ops.schedule", ["--package", str(package), "--host", kfp.url,
                                      "--param", "train_steps=5"])]
        for module, args in commands:
            done = _probe(module, args)
            assert done.stdout.strip().splitlines()[-2:] == ["0", "[]"], (module, args,
                                                                        done.stdout[-500:])
            assert done.stderr == "", (module, args, done.stderr)
