"""--beam-mode dask: its options, the Beam arguments they make, and an unreachable scheduler
refused before a run (one line, exit code 2)."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from pipeline.config import DASK_RUNNER, SETUP_FILE, PipelineConfig
from pipeline.preflight import UserError, check_dask_scheduler
from tools.dask_cluster import ROOT


def test_dask_mode_names_the_projects_runner_and_the_scheduler():
    config = PipelineConfig.from_args(["--beam-mode", "dask", "--dask-address",
                                       "tcp://10.0.0.5:8786", "--dask-timeout", "600"], {})
    assert config.beam_pipeline_args == [
        f"--runner={DASK_RUNNER}", "--dask_client_address=tcp://10.0.0.5:8786",
        "--dask_connection_timeout=10", "--dask_run_timeout=600", f"--setup_file={SETUP_FILE}"]


@pytest.mark.parametrize("bad", [{"beam_mode": "dask"},
                                 {"dask_address": "tcp://h:1"},
                                 {"beam_mode": "dask", "dask_address": "h:8786"},
                                 {"beam_mode": "dask", "dask_address": "tcp://h:port"},
                                 {"beam_mode": "dask", "dask_address": "tcp://h:1",
                                  "dask_timeout": 0}])
def test_bad_dask_options_are_refused(bad):
    with pytest.raises(ValueError, match="dask"):
        PipelineConfig(**bad)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_listening_scheduler_passes_and_a_closed_port_is_a_user_error():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_dask_scheduler(PipelineConfig(beam_mode="dask",
                                            dask_address=f"tcp://127.0.0.1:{port}"))
    with pytest.raises(UserError, match="--dask-address tcp://127.0.0.1:.*no Dask scheduler"):
        check_dask_scheduler(PipelineConfig(beam_mode="dask",
                                            dask_address=f"tcp://127.0.0.1:{_free_port()}"))


def test_the_runner_exits_2_with_one_line_before_any_component(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.local_runner", "--beam-mode", "dask", "--dask-address",
         f"tcp://127.0.0.1:{_free_port()}", "--work-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("error: --dask-address tcp://127.0.0.1:") and "no Dask" in line
    assert not (tmp_path / "pipelines" / "image-classifier" / "metadata.db").exists()


def test_the_compiled_kubeflow_package_points_the_beam_components_at_the_cluster(tmp_path):
    from kfp import components as kfp_components

    from pipeline.kubeflow_runner import compile_pipeline
    address = "tcp://dask-scheduler.kubeflow:8786"
    config = PipelineConfig.from_args([
        "--data-root", "/mnt/data/images", "--pipeline-root", "gs://bucket/runs",
        "--serving-dir", "/mnt/data/serving", "--pvc-name", "datasets", "--beam-mode", "dask",
        "--dask-address", address, "--image-height", "8", "--image-width", "8",
        "--image-channels", "1", "--num-classes", "10"], environ={})
    package = kfp_components.load_component_from_file(
        compile_pipeline(config, str(tmp_path / "pipeline.yaml")))
    executors = package.pipeline_spec.deployment_spec["executors"]
    for component in ("ImportExampleGen", "ImageValidator", "StatisticsGen", "Transform",
                      "Evaluator"):
        args = executors[f"{component}_executor"]["container"]["args"]
        assert f"--runner={DASK_RUNNER}" in args and f"--dask_client_address={address}" in args
