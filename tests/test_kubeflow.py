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
            "ExampleValidator", "AnomalyGate", "Transform", "Trainer", "Evaluator",
            "VersionedPusher"} <= set(tasks)
    assert set(tasks["ImageValidator"].dependent_tasks) == {"ImportExampleGen"}
    assert set(tasks["Transform"].dependent_tasks) == {"ImageValidator", "SchemaGen",
                                                       "AnomalyGate"}  # data checked first
    assert "ExampleValidator" in tasks["AnomalyGate"].dependent_tasks
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


def test_a_compiled_task_runs_as_the_kfp_launcher_would_run_it(tmp_path):
    """StatisticsGen's container command from the spec, on an ExecutorInput with local paths."""
    import json

    import tensorflow as tf
    import yaml

    from pipeline.default_data import digits_examples

    package = compile_pipeline(PipelineConfig(pipeline_root=str(tmp_path / "root")),
                               str(tmp_path / "pipeline.yaml"))
    spec = next(yaml.safe_load_all(open(package)))
    component = spec["components"]["StatisticsGen"]
    container = spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
    task = spec["root"]["dag"]["tasks"]["StatisticsGen"]

    examples = tmp_path / "examples"
    for split in ("train", "eval"):
        (examples / f"Split-{split}").mkdir(parents=True)
    writers = {s: tf.io.TFRecordWriter(str(examples / f"Split-{s}" / "data.gz"), "GZIP")
               for s in ("train", "eval")}
    for split, record in digits_examples():
        writers[split].write(record)
    for writer in writers.values():
        writer.close()

    def artifact(definitions, name, uri, metadata=None):
        schema = definitions["artifacts"][name]["artifactType"]
        return {"artifacts": [{"uri": uri, "name": name, "type": schema,
                               "metadata": metadata or {}}]}

    executor_input = {
        "inputs": {
            "artifacts": {"examples": artifact(component["inputDefinitions"], "examples",
                                               str(examples),
                                               {"split_names": '["train", "eval"]'})},
            "parameters": {k: v["runtimeValue"]["constantValue"]
                           for k, v in task["inputs"].get("parameters", {}).items()},
        },
        "outputs": {
            "artifacts": {"statistics": artifact(component["outputDefinitions"], "statistics",
                                                 str(tmp_path / "statistics"))},
            "outputFile": str(tmp_path / "task" / "executor_output.json"),
        },
    }
    args = [json.dumps(executor_input) if a == "{{$}}" else a for a in container["args"]]
    command = [sys.executable] + container["command"][1:] + args  # "python" of this venv
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for split in ("train", "eval"):
        assert (tmp_path / "statistics" / f"Split-{split}" / "FeatureStats.pb").stat().st_size
    assert (tmp_path / "task" / "executor_output.json").exists()
