"""The Kubeflow Pipelines v2 package: compiled from create_pipeline, loaded by the kfp SDK."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from kfp import components as kfp_components

from pipeline.config import PipelineConfig
from pipeline.kubeflow_runner import check_executors, compile_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The data root is not readable at compile time: the model's input is set, not from the data.
SHAPE = ["--image-height", "8", "--image-width", "8", "--image-channels", "1",
         "--num-classes", "10"]
DATAFLOW = ("--runner=DataflowRunner --project=my-project --region=europe-west4 "
            "--temp_location=gs://bucket/tmp --experiments=use_runner_v2")


@pytest.fixture(scope="module")
def package_path(tmp_path_factory):
    config = PipelineConfig.from_args([
        "--data-root", "gs://bucket/images", "--pipeline-root", "gs://bucket/runs",
        "--serving-dir", "/mnt/data/serving", "--kfp-image", "registry.example.com/tip:1.2",
        "--beam-args", DATAFLOW, "--profile", "gpu", "--trainer-gpus", "2", "--trainer-cpu", "12",
        "--trainer-memory", "48G", "--gpu-node-selector", "cloud.google.com/gke-accelerator=nvidia-l4",
        "--pvc-name", "datasets", "--spans", "true", "--train-steps", "600", "--epochs", "6",
        "--learning-rate", "0.002", "--batch-size", "64", "--min-accuracy", "0.85",
        "--tune", "true", *SHAPE], environ={})
    return compile_pipeline(config, str(tmp_path_factory.mktemp("kfp") / "pipeline.yaml"))


@pytest.fixture(scope="module")
def package(package_path):
    return kfp_components.load_component_from_file(package_path)


def test_all_components_with_their_dependencies(package):
    tasks = package.pipeline_spec.root.dag.tasks
    assert {"DataSpan", "ImportExampleGen", "ImageValidator", "StatisticsGen", "SchemaGen",
            "ExampleValidator", "AnomalyGate", "Transform", "Trainer", "ServedVersion",
            "ServedModel", "Evaluator", "VersionedPusher", "Tuner"} == set(tasks)
    assert set(tasks["ImportExampleGen"].dependent_tasks) == {"DataSpan"}
    assert set(tasks["ImageValidator"].dependent_tasks) == {"ImportExampleGen"}
    assert set(tasks["Transform"].dependent_tasks) == {"ImageValidator", "SchemaGen",
                                                       "AnomalyGate"}  # data checked first
    assert "ExampleValidator" in tasks["AnomalyGate"].dependent_tasks
    assert {"Transform", "SchemaGen", "Tuner"} <= set(tasks["Trainer"].dependent_tasks)
    assert {"Transform", "SchemaGen"} == set(tasks["Tuner"].dependent_tasks)
    assert "Trainer" in tasks["Evaluator"].dependent_tasks
    assert set(tasks["ServedModel"].dependent_tasks) == {"ServedVersion"}
    assert "ServedModel" in tasks["Evaluator"].dependent_tasks  # the baseline: what is served
    assert "Evaluator" in tasks["VersionedPusher"].dependent_tasks


def _container(package, component):
    return package.pipeline_spec.deployment_spec["executors"][f"{component}_executor"]["container"]


def test_trainer_and_tuner_request_gpus_cpu_and_memory_on_gpu_nodes(package):
    for component in ("Trainer", "Tuner"):
        resources = _container(package, component)["resources"]
        assert resources["accelerator"] == {"type": "nvidia.com/gpu", "count": "2"}
        assert resources["cpuLimit"] == 12 and resources["memoryLimit"] == 48
    assert _container(package, "Transform")["resources"]["cpuLimit"] == 4
    from google.protobuf import json_format
    kubernetes = json_format.MessageToDict(
        package.platform_spec.platforms["kubernetes"].deployment_spec)["executors"]
    for executor in ("Trainer_executor", "Tuner_executor"):
        assert kubernetes[executor]["nodeSelector"]["labels"] == {
            "cloud.google.com/gke-accelerator": "nvidia-l4"}
        assert kubernetes[executor]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert kubernetes["Transform_executor"]["pvcMount"] == [
        {"constant": "datasets", "mountPath": "/mnt/data"}]
    assert "nodeSelector" not in kubernetes["Transform_executor"]


def test_real_tfx_entrypoint_image_and_beam_args(package):
    for component in ("StatisticsGen", "Transform", "Evaluator", "Trainer", "ImageValidator"):
        container = _container(package, component)
        assert container["image"] == "registry.example.com/tip:1.2"
        assert container["command"] == ["python", "-m", "pipeline.kfp_entrypoint"]
        assert "{{$}}" in container["args"]
    for component in ("StatisticsGen", "Transform", "ImageValidator"):
        args = _container(package, component)["args"]
        assert all(arg in args for arg in DATAFLOW.split())
        assert "--setup_file=/opt/tfx-image-pipeline/setup.py" in args  # the image's project
    dockerfile = open(os.path.join(ROOT, "kfp", "Dockerfile")).read()
    assert re.search(r"^WORKDIR /opt/tfx-image-pipeline$", dockerfile, re.M)
    assert "COPY requirements.lock requirements-cuda.lock setup.py" in dockerfile
    assert package.pipeline_spec.default_pipeline_root == "gs://bucket/runs"
    assert package.pipeline_spec.pipeline_info.name == "image-classifier"


def test_dockerfile_copies_what_exists_and_kfp_folder_is_no_package():
    dockerfile = open(os.path.join(ROOT, "kfp", "Dockerfile")).read()
    for sources in re.findall(r"^COPY (?!--from=)(.+) \S+$", dockerfile, re.M):  # context only
        for source in sources.split():
            assert os.path.exists(os.path.join(ROOT, source)), source
    assert '"pipeline.kfp_entrypoint"' in dockerfile
    assert not os.path.exists(os.path.join(ROOT, "kfp", "__init__.py"))
    out = subprocess.run([sys.executable, "-c", "import kfp; print(kfp.__file__)"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "site-packages" in out


def test_the_image_installs_locked_wheels_as_built_with_pinned_gpu_libraries():
    """A base whose glibc takes the manylinux_2_39 wheels (Debian 13: 2.41), and every CUDA
    requirement of tensorflow's and-cuda extra pinned with a hash inside tensorflow's range."""
    from importlib import metadata

    from packaging.requirements import Requirement
    dockerfile = open(os.path.join(ROOT, "kfp", "Dockerfile")).read()
    assert re.search(r"^FROM python:3\.11-slim-trixie$", dockerfile, re.M)
    assert "--require-hashes -r requirements-cuda.lock" in dockerfile
    lock = open(os.path.join(ROOT, "requirements-cuda.lock")).read()
    pins = dict(re.findall(r"^([\w-]+)==(\S+) \\\n\s+--hash=sha256:[0-9a-f]{64}$", lock, re.M))
    needed = [Requirement(r) for r in metadata.requires("tensorflow")
              if 'extra == "and-cuda"' in r]
    assert needed and {r.name for r in needed} <= set(pins)
    for requirement in needed:
        assert requirement.specifier.contains(pins[requirement.name]), requirement


def _spec(path: str) -> dict:
    return next(yaml.safe_load_all(open(path)))


def test_only_container_and_importer_executors(package_path):
    """Open-source KFP's Argo compiler refuses any other executor (resolvers included)."""
    spec = _spec(package_path)
    for name, executor in spec["deploymentSpec"]["executors"].items():
        assert set(executor) <= {"container", "importer"}, name
    assert not any("resolver" in task.lower() for task in spec["root"]["dag"]["tasks"])
    with pytest.raises(ValueError, match="Resolver_executor is a resolver executor"):
        check_executors({"deploymentSpec": {"executors": {"Resolver_executor": {
            "resolver": {"outputArtifactQueries": {}}}}}})


def test_run_time_parameters_are_root_inputs_with_the_compiled_defaults(package_path):
    parameters = _spec(package_path)["root"]["inputDefinitions"]["parameters"]
    assert {name: (p["parameterType"], p["defaultValue"], p["isOptional"])
            for name, p in parameters.items()} == {
        "span": ("NUMBER_INTEGER", 0, True), "train_steps": ("NUMBER_INTEGER", 600, True),
        "epochs": ("NUMBER_INTEGER", 6, True), "learning_rate": ("NUMBER_DOUBLE", 0.002, True),
        "batch_size": ("NUMBER_INTEGER", 64, True), "min_accuracy": ("NUMBER_DOUBLE", 0.85, True)}
    tasks = _spec(package_path)["root"]["dag"]["tasks"]
    bound = {(task, key): value["componentInputParameter"] for task, t in tasks.items()
             for key, value in t["inputs"].get("parameters", {}).items()
             if "componentInputParameter" in value}
    # ServedVersion takes all of them: an identical run (the same values) replays from cache
    assert bound == {("DataSpan", "span"): "span", ("Trainer", "train_steps"): "train_steps",
                     ("Trainer", "epochs"): "epochs", ("Trainer", "batch_size"): "batch_size",
                     ("Trainer", "learning_rate"): "learning_rate",
                     ("Evaluator", "min_accuracy"): "min_accuracy",
                     **{("ServedVersion", name): name for name in parameters}}


def test_new_data_reaches_the_cache_key_of_import_example_gen(package_path):
    """KFP's cache key is a task's input parameters and artifacts: the never-cached DataSpan
    hands the span and fingerprint of the data on as ImportExampleGen's parameters."""
    tasks = _spec(package_path)["root"]["dag"]["tasks"]
    for name, task in tasks.items():
        assert task["cachingOptions"] == {"enableCache": name not in ("DataSpan",
                                                                      "ServedVersion")}, name
    parameters = tasks["ImportExampleGen"]["inputs"]["parameters"]
    assert {k: parameters[k]["taskOutputParameter"] for k in ("range_config",
                                                              "data_fingerprint")} == {
        "range_config": {"producerTask": "DataSpan", "outputParameterKey": "range_config"},
        "data_fingerprint": {"producerTask": "DataSpan", "outputParameterKey": "fingerprint"}}
    assert tasks["ServedModel"]["inputs"]["parameters"]["version"]["taskOutputParameter"] == {
        "producerTask": "ServedVersion", "outputParameterKey": "version"}


CLUSTER = ["--pipeline-root", "minio://mlpipeline/v2/artifacts", "--pvc-name", "data",
           "--data-root", "/mnt/data/images", "--serving-dir", "/mnt/data/serving", *SHAPE]


@pytest.mark.parametrize("flags, message", [
    (["--serving-dir", "gs://bucket/serving"], "object stores have no atomic rename"),
    (["--data-root", "s3://bucket/images"], "s3:// is not readable here"),
    (["--pipeline-root", "/mnt/data/root"], "accepts only minio://, s3://, gs:// pipeline roots"),
    (["--data-root", ""], "no --data-root: the tasks cannot see this machine's embedded data"),
    (["--pvc-name", ""], "--data-root /mnt/data/images is no path of the tasks: mount a volume"),
    (["--serving-dir", "/srv/serving"], "--serving-dir /srv/serving is no path of the tasks"),
])
def test_what_cannot_run_on_a_cluster_fails_at_compile_time_in_one_line(flags, message, capsys):
    from pipeline import kubeflow_runner
    try:
        code = kubeflow_runner.main(CLUSTER + flags)
    except SystemExit as exit_:
        code = exit_.code
    error = capsys.readouterr().err
    assert code == 2 and message in error and len(error.strip().splitlines()) == 1, error


@pytest.mark.parametrize("flags, message", [
    (["--trainer-gpus", "2"], "--trainer-gpus given with --profile cpu (no GPU)"),
    (["--gpu-node-selector", "accelerator=nvidia-l4", "--gpu-type", "amd.com/gpu"],
     "--gpu-node-selector, --gpu-type given with --profile cpu (no GPU)"),
    (["--profile", "gpu", "--gpu-node-selector", "nvidia-l4"],
     "--gpu-node-selector nvidia-l4: expected label=value"),
    (["--profile", "gpu", "--trainer-gpus", "2", "--strategy", "one_device"],
     "--strategy one_device trains on one of --trainer-gpus 2"),
    (["--profile", "tpu"], "profile must be one of ('cpu', 'gpu'), got 'tpu'"),
])
def test_gpu_options_contradicting_the_profile_fail_at_compile_time_in_one_line(
        flags, message, capsys):
    test_what_cannot_run_on_a_cluster_fails_at_compile_time_in_one_line(flags, message, capsys)


@pytest.fixture(scope="module")
def cluster_path(tmp_path_factory):
    """The package of the default (cpu) profile."""
    return compile_pipeline(PipelineConfig.from_args(CLUSTER, {}),
                            str(tmp_path_factory.mktemp("cpu") / "p.yaml"))


@pytest.fixture(scope="module")
def cluster_spec(cluster_path):
    return _spec(cluster_path)


def test_the_cpu_profile_asks_for_no_gpu_and_schedules_anywhere(cluster_path, cluster_spec):
    executors = cluster_spec["deploymentSpec"]["executors"]
    assert all("accelerator" not in e["container"].get("resources", {})
               for e in executors.values())
    platform = list(yaml.safe_load_all(open(cluster_path)))[1]["platforms"]["kubernetes"]
    assert {key for executor in platform["deploymentSpec"]["executors"].values()
            for key in executor} == {"pvcMount"}  # no toleration, no node selector


def test_the_gpu_profile_gives_one_gpu_unless_told_more():
    from google.protobuf import json_format

    from pipeline.kubeflow_runner import kubernetes_config, resource_specs
    config = PipelineConfig.from_args(CLUSTER + ["--profile", "gpu"], {})
    assert resource_specs(config)["Trainer"].accelerator.count == 1
    trainer = json_format.MessageToDict(kubernetes_config(config, "Trainer_executor"))
    assert trainer["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                       "effect": "NoSchedule"}] and "nodeSelector" not in trainer
    assert "tolerations" not in json_format.MessageToDict(
        kubernetes_config(config, "Transform_executor"))


def test_every_task_has_a_retry_policy(package_path, cluster_spec):
    for spec in (_spec(package_path), cluster_spec):
        tasks = spec["root"]["dag"]["tasks"]
        assert {name: task.get("retryPolicy") for name, task in tasks.items()} == dict.fromkeys(
            tasks, {"maxRetryCount": 2, "backoffDuration": "30s", "backoffFactor": 2.0,
                    "backoffMaxDuration": "600s"})
    from pipeline.kubeflow_runner import set_retries
    spec = _spec(package_path)
    set_retries(spec, 0)  # --task-retries 0
    assert not any("retryPolicy" in task for task in spec["root"]["dag"]["tasks"].values())


def test_the_compiler_says_which_store_credentials_the_cluster_needs():
    from pipeline.kubeflow_runner import credentials_needed
    assert credentials_needed(PipelineConfig.from_args(CLUSTER, {})) == []  # minio: the default
    s3 = credentials_needed(PipelineConfig.from_args(
        CLUSTER + ["--pipeline-root", "s3://bucket/root"], {}))
    assert len(s3) == 1 and "ConfigMap kfp-launcher with providers.s3" in s3[0]
    gs = credentials_needed(PipelineConfig.from_args(
        CLUSTER + ["--data-root", "gs://bucket/images"], {}))
    assert len(gs) == 1 and "stages gs:// inputs to /gcs" in gs[0]


def test_the_compiler_warns_that_dask_workers_need_a_gs_root():
    from pipeline.kubeflow_runner import engine_warnings
    dask = ["--beam-mode", "dask", "--dask-address", "tcp://dask-scheduler.kubeflow:8786"]
    assert engine_warnings(PipelineConfig.from_args(CLUSTER, {})) == []
    minio = engine_warnings(PipelineConfig.from_args(CLUSTER + dask, {}))
    assert len(minio) == 1 and "minio:// pipeline root" in minio[0] and "gs://" in minio[0]
    assert engine_warnings(PipelineConfig.from_args(
        CLUSTER + dask + ["--pipeline-root", "gs://bucket/root"], {})) == []


def test_parameters_from_tasks_have_their_producers_types(cluster_spec):
    """The driver refuses a string where a number is declared and turns a number consumed as
    STRING into text (a served version 0 became "0"): each such input has its producer's
    type, and the inputs spec in the command says the same."""
    spec = cluster_spec
    served_model = spec["components"]["ServedModel"]
    assert served_model["inputDefinitions"]["parameters"]["version"] == {
        "parameterType": "NUMBER_INTEGER"}
    args = spec["deploymentSpec"]["executors"]["ServedModel_executor"]["container"]["args"]
    inputs_spec = json.loads(args[args.index("--json_serialized_inputs_spec_args") + 1])
    assert inputs_spec == served_model["inputDefinitions"]
