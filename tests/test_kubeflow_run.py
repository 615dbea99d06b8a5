"""The compiled package run as the open-source KFP v2 backend runs it (``tests/kfp_backend``).

A 2.17 cluster with the default ``minio://`` pipeline root and a volume for data and serving:
the first run pushes a version, an identical run is all cache hits but the two observers, a
new span reruns ImportExampleGen and everything after it, run-time ``min_accuracy`` and
``train_steps`` are honoured, ids stay exact, and the gateway serves what the cluster pushed.
Every other release of kfp/VERSIONS.md runs the package's first two tasks (DataSpan, then
ImportExampleGen: parameters between tasks, artifacts provisioned, written and uploaded) with
its own output conventions (artifacts downloaded by a consumer: tests/test_kfp_backend_rules
on every release), and parses every task's Kubernetes config.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest

from domain import registry
from domain.features import TRAINER_SUMMARY
from pipeline.kubeflow_runner import compile_pipeline
from tests.kfp_backend import RELEASES, Backend, BackendError, kubernetes_config_problem
from tests.helpers import volume_config, write_examples

ALL = {"DataSpan", "ImportExampleGen", "ImageValidator", "StatisticsGen", "SchemaGen",
       "ExampleValidator", "AnomalyGate", "Transform", "Trainer", "ServedVersion",
       "ServedModel", "Evaluator", "VersionedPusher"}
OBSERVERS = {"DataSpan", "ServedVersion"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from pipeline.default_data import digits_examples
    work = tmp_path_factory.mktemp("cluster")
    volume = work / "volume"  # the PVC every task mounts
    records = list(digits_examples())
    write_examples(volume / "images" / "span-1", records[:900])
    config = volume_config(volume, "--train-steps", "60", "--eval-steps", "5",
                           "--min-accuracy", "0.3", "--max-regression", "1.0",
                           "--trainer-gpus", "0")
    package = compile_pipeline(config, str(work / "pipeline.yaml"))
    backend = Backend(work, "2.17")
    yield backend, package, config, volume, records
    backend.close()


def _pushed(backend, run) -> dict:
    return backend.store_path(run.tasks["VersionedPusher"].artifacts["pushed_model"].uri), \
        run.tasks["VersionedPusher"].artifacts["pushed_model"].properties


def test_runs_caching_spans_run_time_parameters_and_the_gateway(cluster):
    backend, package, config, volume, records = cluster
    first = backend.create_run(package)  # the cluster's default root: minio://
    assert first.executed() == ALL and first.root.startswith("minio://mlpipeline/v2/artifacts/")
    assert registry.versions(config.push_dir) == [1]
    assert all("executor-logs" in task.artifacts for task in first.tasks.values())
    trained = first.tasks["Trainer"].artifacts["model"]
    assert backend.store_path(trained.uri).is_dir()  # uploaded by the launcher from /minio/
    first_entry = registry.read_manifest(config.push_dir)[0]
    assert first_entry["baseline_version"] is None

    second = backend.create_run(package)
    assert second.executed() == OBSERVERS  # identical: everything else from cache
    assert registry.versions(config.push_dir) == [1]

    write_examples(volume / "images" / "span-2", records[900:])
    third = backend.create_run(package, {"min_accuracy": 1.01})  # a gate nothing passes
    assert third.executed() == ALL  # a new span: ImportExampleGen and everything after it
    assert registry.versions(config.push_dir) == [1]
    _, pushed = _pushed(backend, third)
    assert pushed["pushed"] == 0 and "not blessed" in pushed["reason"]
    assert third.tasks["ImportExampleGen"].artifacts["examples"].properties["custom:span"] == 2

    fourth = backend.create_run(package, {"train_steps": 90})
    assert fourth.executed() == OBSERVERS | {"Trainer", "Evaluator", "VersionedPusher"}
    summary = backend.store_path(fourth.tasks["Trainer"].artifacts["model_run"].uri)
    assert json.loads((summary / TRAINER_SUMMARY).read_text())["train_steps"] == 90
    assert registry.versions(config.push_dir) == [1, 2]
    entry = registry.read_manifest(config.push_dir)[-1]
    assert entry["baseline_version"] == 1 and entry["spans"] == [2]
    assert entry["baseline_model_id"] == first_entry["model_id"] > 2 ** 53  # exact ids

    with _gateway(config) as url:
        from pipeline.default_data import png_bytes
        import numpy as np
        response = httpx.post(f"{url}/v1/models/{config.model_name}:classify",
                              content=png_bytes(np.zeros((8, 8), np.uint8)),
                              headers={"Content-Type": "image/png"}, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == 2


class _gateway:
    """``python -m serving`` over the serving dir the cluster pushed into."""

    def __init__(self, config):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.command = [sys.executable, "-m", "serving", "--serving-dir", config.serving_dir,
                        "--model-name", config.model_name, "--no-auth", "--port",
                        str(self.port)]

    def __enter__(self) -> str:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True,
                                        cwd=os.path.dirname(os.path.dirname(__file__)))
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            assert self.process.poll() is None, self.process.stderr.read()
            time.sleep(0.5)
        raise TimeoutError("the gateway never became ready")

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(30)


def test_the_backend_refuses_what_it_refuses(cluster, tmp_path):
    backend, package, *_ = cluster
    with pytest.raises(BackendError, match="unrecognized pipeline root format"):
        backend.create_run(package, pipeline_root="/local/path")
    with pytest.raises(BackendError, match="unsupported provider in provider config mem"):
        backend.create_run(package, pipeline_root="mem://mlpipeline/v2/artifacts")
    with pytest.raises(BackendError, match="not required by pipeline: train_step"):
        backend.create_run(package, {"train_step": 5})
    with pytest.raises(BackendError, match="train_steps requires type double or integer"):
        backend.create_run(package, {"train_steps": "5"})
    import yaml
    documents = list(yaml.safe_load_all(open(package)))
    parameters = documents[0]["root"]["dag"]["tasks"]["ServedModel"]["inputs"]["parameters"]
    parameters["version"]["taskOutputParameter"]["producerTask"] = "ServedVersion_task"
    broken = tmp_path / "tfx-names.yaml"
    broken.write_text(yaml.safe_dump_all(documents))
    with pytest.raises(BackendError, match='unknown producer task "ServedVersion_task"'):
        backend.create_run(str(broken))


FIRST_TASKS = {"DataSpan", "ImportExampleGen"}


@pytest.mark.parametrize("release", [r for r in RELEASES if r.name != "2.17"],
                         ids=lambda release: release.name)
def test_every_release_runs_the_first_two_tasks(cluster, tmp_path, release):
    backend, package, *_ = cluster
    other = Backend(tmp_path, release.name, forker=backend.task_forker())
    try:
        run = other.create_run(package, tasks={"ImportExampleGen"})
    finally:
        other.close()
    assert run.executed() == FIRST_TASKS
    examples = run.tasks["ImportExampleGen"].artifacts["examples"]
    salt = "/[0-9a-f-]{36}" if release.version >= (2, 4) else ""
    assert re.fullmatch(re.escape(f"{run.root}/ImportExampleGen") + salt + "/examples",
                        examples.uri), examples.uri
    assert examples.properties["custom:span"] >= 1
    stored = other.store_path(examples.uri)
    assert {p.name for p in stored.iterdir()} == {"Split-eval", "Split-train"}
    assert run.tasks["DataSpan"].parameters["range_config"]
    logs = {"executor-logs" in task.artifacts for task in run.tasks.values()}
    assert logs == {release.version >= (2, 5)}
    for pod in (tmp_path / "pods" / run.id).iterdir():
        legacy = (pod / "tmp/kfp_outputs/output_metadata.json").exists()
        assert legacy == (release.version < (2, 15)), pod


def test_the_gpu_package_is_refused_by_2_0_only(cluster, tmp_path):
    import yaml
    _, package, config, *_ = cluster
    cpu = list(yaml.safe_load_all(open(package)))[1]["platforms"]["kubernetes"][
        "deploymentSpec"]["executors"]
    gpu_config = dataclasses.replace(config, profile="gpu")
    gpu = list(yaml.safe_load_all(open(compile_pipeline(gpu_config, str(
        tmp_path / "gpu.yaml")))))[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert "tolerations" in gpu["Trainer_executor"]
    for release in RELEASES:
        assert not any(kubernetes_config_problem(release, c) for c in cpu.values())
        refused = {e for e, c in gpu.items() if kubernetes_config_problem(release, c)}
        assert refused == ({"Trainer_executor"} if release.name == "2.0" else set())
