"""The Kubeflow Pipelines v2 package: compiled from create_pipeline, loaded by the kfp SDK."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from kfp import components as kfp_components

from pipeline.config import PipelineConfig
from pipeline.kubeflow_runner import compile_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATAFLOW = ("--runner=DataflowRunner --project=my-project --region=europe-west4 "
            "--temp_location=gs://bucket/tmp --experiments=use_runner_v2")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    config = PipelineConfig.from_args([
        "--data-root", "gs://bucket/images", "--pipeline-root", "gs://bucket/runs",
        "--serving-dir", "/mnt/data/serving", "--kfp-image", "registry.example.com/tip:1.2",
        "--beam-args", DATAFLOW, "--trainer-gpus", "2", "--trainer-cpu", "12",
        "--trainer-memory", "48G", "--gpu-node-selector", "cloud.google.com/gke-accelerator=nvidia-l4",
        "--pvc-name", "datasets"], environ={})
    path = compile_pipeline(config, str(tmp_path_factory.mktemp("kfp") / "pipeline.yaml"))
    return kfp_components.load_component_from_file(path)


def test_all_components_with_their_dependencies(package):
    tasks = package.pipeline_spec.root.dag.tasks
    assert {"ImportExampleGen", "ImageValidator", "StatisticsGen", "SchemaGen",
            "ExampleValidator", "Transform", "Trainer", "Evaluator",
            "VersionedPusher"} <= set(tasks)
    assert set(tasks["ImageValidator"].dependent_tasks) == {"ImportExampleGen"}
    assert set(tasks["Transform"].dependent_tasks) == {"ImageValidator", "SchemaGen"}
    assert {"Transform", "SchemaGen"} <= set(tasks["Trainer"].dependent_tasks)
    assert "Trainer" in tasks["Evaluator"].dependent_tasks
    assert any("resolver" in t for t in tasks["Evaluator"].dependent_tasks)
    assert "Evaluator" in tasks["VersionedPusher"].dependent_tasks


def _container(package, component):
    return package.pipeline_spec.deployment_spec["executors"][f"{component}_executor"]["container"]


def test_trainer_requests_gpus_cpu_and_memory_on_gpu_nodes(package):
    resources = _container(package, "Trainer")["resources"]
    assert resources["accelerator"] == {"type": "nvidia.com/gpu", "count": "2"}
    assert resources["cpuLimit"] == 12 and resources["memoryLimit"] == 48
    assert _container(package, "Transform")["resources"]["cpuLimit"] == 4
    from google.protobuf import json_format
    kubernetes = json_format.MessageToDict(
        package.platform_spec.platforms["kubernetes"].deployment_spec)["executors"]
    trainer = kubernetes["Trainer_executor"]
    assert trainer["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert trainer["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert kubernetes["Transform_executor"]["pvcMount"] == [
        {"constant": "datasets", "mountPath": "/mnt/data"}]
    assert "nodeSelector" not in kubernetes["Transform_executor"]


def test_real_tfx_entrypoint_image_and_beam_args(package):
    for component in ("StatisticsGen", "Transform", "Evaluator", "Trainer", "ImageValidator"):
        container = _container(package, component)
        assert container["image"] == "registry.example.com/tip:1.2"
        assert container["command"] == [
            "python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
        assert "{{$}}" in container["args"]
    for component in ("StatisticsGen", "Transform", "ImageValidator"):
        args = _container(package, component)["args"]
        assert all(arg in args for arg in DATAFLOW.split())
    assert package.pipeline_spec.default_pipeline_root == "gs://bucket/runs"
    assert package.pipeline_spec.pipeline_info.name == "image-classifier"


def test_dockerfile_copies_what_exists_and_kfp_folder_is_no_package():
    dockerfile = open(os.path.join(ROOT, "kfp", "Dockerfile")).read()
    for sources in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for source in sources.split():
            assert os.path.exists(os.path.join(ROOT, source)), source
    assert "kubeflow_v2_run_executor" in dockerfile
    assert not os.path.exists(os.path.join(ROOT, "kfp", "__init__.py"))
    out = subprocess.run([sys.executable, "-c", "import kfp; print(kfp.__file__)"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "site-packages" in out
