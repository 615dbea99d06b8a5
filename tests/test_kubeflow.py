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
DATAFLOW = ("--runner=DataflowRunner --project=my-project --region=europe-west4 "
            "--temp_location=gs://bucket/tmp --experiments=use_runner_v2")


@pytest.fixture(scope="module")
def package_path(tmp_path_factory):
    config = PipelineConfig.from_args([
        "--data-root", "gs://bucket/images", "--pipeline-root", "gs://bucket/runs",
        "--serving-dir", "/mnt/data/serving", "--kfp-image", "registry.example.com/tip:1.2",
        "--beam-args", DATAFLOW, "--trainer-gpus", "2", "--trainer-cpu", "12",
        "--trainer-memory", "48G", "--gpu-node-selector", "cloud.google.com/gke-accelerator=nvidia-l4",
        "--pvc-name", "datasets", "--spans", "true", "--train-steps", "600", "--epochs", "6",
        "--learning-rate", "0.002", "--batch-size", "64", "--min-accuracy", "0.85",
        "--tune", "true"], environ={})
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


def _artifact(definitions, name, uri, metadata=None):
    schema = definitions["artifacts"][name]["artifactType"]
    return {"artifacts": [{"uri": uri, "name": name, "type": schema, "metadata": metadata or {}}]}


def run_task(spec: dict, name: str, work, inputs: dict | None = None,
             parameters: dict | None = None) -> dict:
    """Runs task ``name`` of a compiled spec as the open-source KFP launcher does: its
    container command on an ExecutorInput (local paths; ``parameters`` stand for the values
    of root inputs and upstream output parameters), without any pre-cache-check driver.
    Returns the ExecutorOutput the task wrote."""
    component = spec["components"][name]
    container = spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
    task = spec["root"]["dag"]["tasks"][name]
    values = {k: v["runtimeValue"]["constant"]
              for k, v in task["inputs"].get("parameters", {}).items() if "runtimeValue" in v}
    values.update(parameters or {})
    assert set(values) == set(task["inputs"].get("parameters", {})), "unbound parameters"
    executor_input = {
        "inputs": {
            "artifacts": {k: _artifact(component["inputDefinitions"], k, uri, metadata)
                          for k, (uri, metadata) in (inputs or {}).items()},
            "parameterValues": values,
        },
        "outputs": {
            "artifacts": {k: _artifact(component["outputDefinitions"], k, str(work / k))
                          for k in component.get("outputDefinitions", {}).get("artifacts", {})},
            "parameters": {k: {"outputFile": str(work / f"{k}.param")}
                           for k in component.get("outputDefinitions", {}).get("parameters", {})},
            "outputFile": str(work / "executor_output.json"),
        },
    }
    args = [json.dumps(executor_input) if a == "{{$}}" else a for a in container["args"]]
    command = [sys.executable] + container["command"][1:] + args  # "python" of this venv
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((work / "executor_output.json").read_text())


def _write_examples(directory, records, compression="GZIP"):
    import tensorflow as tf
    writers = {}
    for split, record in records:
        if split not in writers:
            (directory / split).mkdir(parents=True, exist_ok=True)
            writers[split] = tf.io.TFRecordWriter(str(directory / split / "data.gz"), compression)
        writers[split].write(record)
    for writer in writers.values():
        writer.close()


def test_a_compiled_task_runs_as_the_kfp_launcher_would_run_it(tmp_path):
    """StatisticsGen's container command from the spec, on an ExecutorInput with local paths."""
    from pipeline.default_data import digits_examples

    spec = _spec(compile_pipeline(PipelineConfig(pipeline_root=str(tmp_path / "root")),
                                  str(tmp_path / "pipeline.yaml")))
    _write_examples(tmp_path / "examples", (("Split-" + s, r) for s, r in digits_examples()))
    run_task(spec, "StatisticsGen", tmp_path, inputs={"examples": (
        str(tmp_path / "examples"), {"split_names": '["train", "eval"]'})})
    for split in ("train", "eval"):
        assert (tmp_path / "statistics" / f"Split-{split}" / "FeatureStats.pb").stat().st_size


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
    assert bound == {("DataSpan", "span"): "span", ("Trainer", "train_steps"): "train_steps",
                     ("Trainer", "epochs"): "epochs", ("Trainer", "batch_size"): "batch_size",
                     ("Trainer", "learning_rate"): "learning_rate",
                     ("Evaluator", "min_accuracy"): "min_accuracy"}


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
        "range_config": {"producerTask": "DataSpan_task", "outputParameterKey": "range_config"},
        "data_fingerprint": {"producerTask": "DataSpan_task",
                             "outputParameterKey": "fingerprint"}}
    assert tasks["ServedModel"]["inputs"]["parameters"]["version"]["taskOutputParameter"] == {
        "producerTask": "ServedVersion_task", "outputParameterKey": "version"}


def test_a_new_span_changes_what_the_compiled_steps_read(tmp_path):
    """DataSpan then ImportExampleGen, run from the spec as open-source KFP runs them (no
    ExampleGen driver): span 1, then a new span 2 changes the parameters that key
    ImportExampleGen's cache, and ImportExampleGen reads span 2 and says so."""
    from pipeline.default_data import digits_examples

    data = tmp_path / "data"
    spec = _spec(compile_pipeline(PipelineConfig.from_args(
        ["--data-root", str(data), "--spans", "true", "--pipeline-root", str(tmp_path / "root")],
        {}), str(tmp_path / "pipeline.yaml")))
    records = list(digits_examples())
    _write_examples(data / "span-1", records[:600])
    seen = []
    for span, run_time_span in ((1, 0), (2, 0), (1, 1)):
        if span == 2:
            _write_examples(data / "span-2", records[600:])
        work = tmp_path / f"run-{span}-{run_time_span}"
        work.mkdir()
        output = run_task(spec, "DataSpan", work, parameters={"span": run_time_span})
        seen.append(output["parameterValues"])
    assert json.loads(seen[0]["range_config"])["static_range"]["start_span_number"] == 1
    assert json.loads(seen[1]["range_config"])["static_range"]["start_span_number"] == 2
    assert seen[0]["fingerprint"] != seen[1]["fingerprint"]
    assert seen[2] == seen[0]  # the span run-time parameter pins an older span

    work = tmp_path / "example-gen"
    work.mkdir()
    output = run_task(spec, "ImportExampleGen", work, parameters={
        "range_config": seen[1]["range_config"], "data_fingerprint": seen[1]["fingerprint"]})
    examples = output["artifacts"]["examples"]["artifacts"][0]["metadata"]
    assert examples["custom:span"] == 2 and examples["input_fingerprint"] == seen[1]["fingerprint"]
    import tensorflow as tf
    count = sum(1 for _ in tf.data.TFRecordDataset(
        tf.io.gfile.glob(str(work / "examples" / "Split-*" / "*")), "GZIP"))
    assert count == len(records) - 600


@pytest.mark.parametrize("flags, message", [
    (["--serving-dir", "gs://bucket/serving"], "object stores have no atomic rename"),
    (["--pipeline-root", "s3://bucket/root"], "s3:// is not readable here"),
])
def test_object_store_paths_fail_at_compile_time(flags, message, capsys):
    from pipeline import kubeflow_runner
    with pytest.raises(SystemExit) as exit_:
        kubeflow_runner.main(flags)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
