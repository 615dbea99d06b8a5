"""Compile the pipeline for Kubeflow Pipelines v2: ``python -m pipeline.kubeflow_runner``.

The same ``create_pipeline(config)`` as the local runner, compiled by TFX's
KubeflowV2DagRunner into a KFP package (YAML: the pipeline spec, then the Kubernetes platform
spec). ``--profile cpu`` (the default) asks for no GPU, so every task schedules on any node;
``--profile gpu`` gives the Trainer and Tuner GPUs, the GPU toleration and ``--gpu-node-selector``
(GPU options under ``cpu`` are refused). Per-task resources come from TFX's platform config
(the Trainer's GPUs, CPU and memory; CPU and memory for the Beam components); node selector,
GPU tolerations and an optional volume mount from the kfp-kubernetes executor config. Every
task has a retry policy (``--task-retries``). Paths (``--data-root``, ``--pipeline-root``,
``--serving-dir``) are the cluster's (GCS or the mounted volume; the serving dir always a
volume), and ``--beam-mode``/``--beam-args`` pick the Beam runner of the data components.

The package runs on open-source Kubeflow Pipelines (``for_open_source``): only container
executors (compiling fails on any other kind), every task run by ``pipeline.kfp_entrypoint``
(which adapts the backend's ExecutorInput to TFX), producer task names and parameter types
the backend's compiler and driver accept, the observer steps never cached, and the run-time
parameters (``pipeline.config.RUN_TIME_PARAMETERS``) declared as root inputs defaulting to
the config's values. What cannot work on a cluster is refused at compile time
(``cluster_problem``): no data root, paths of this machine without a volume, a pipeline root
the backend refuses; and a model input left to data this machine cannot read (an object
store: set the shape and class options). The credentials an s3:// or gs:// path needs on the
cluster are announced (``credentials_needed``).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline import data_shape
from pipeline.config import GPU_TYPE, SETUP_FILE, PipelineConfig
from pipeline.preflight import UserError

ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
# They train models: GPUs, CPU and memory of the trainer_* options, on GPU nodes.
TRAINING_COMPONENTS = ("Trainer", "Tuner")
OPEN_SOURCE_EXECUTORS = ("container", "importer")
# Pipeline roots the open-source API server accepts (mem:// aside: no task could read it).
BACKEND_ROOTS = ("minio", "s3", "gs")
ENTRYPOINT = ["python", "-m", "pipeline.kfp_entrypoint"]
IMAGE_SETUP_FILE = "/opt/tfx-image-pipeline/setup.py"  # the project in kfp/Dockerfile
INPUTS_SPEC_FLAG = "--json_serialized_inputs_spec_args"
BEAM_COMPONENTS = ("ImportExampleGen", "ImageValidator", "StatisticsGen", "Transform",
                   "Evaluator")
# A failed task's pod runs again after 30 s, then 60 s, ... at most 10 min apart (Argo's
# retryStrategy on the executor pod: the backend compiles it from KFP 2.5 on).
RETRY_BACKOFF = {"backoffDuration": "30s", "backoffFactor": 2.0, "backoffMaxDuration": "600s"}


def _memory_gb(text: str) -> float:
    units = {"G": 1.0, "Gi": 1.073741824, "M": 1e-3, "Mi": 1.048576e-3}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * units[unit]
    return float(text)


def gpus(config: PipelineConfig) -> int:
    """The Trainer's and Tuner's GPUs: none under the cpu profile, at least 1 under gpu."""
    return max(config.trainer_gpus, 1) if config.profile == "gpu" else 0


def profile_problem(config: PipelineConfig) -> str:
    """Why the GPU options contradict ``--profile`` (or the strategy), in one line, or ""."""
    if config.profile == "cpu":
        given = [option for option, value in (
            ("--trainer-gpus", config.trainer_gpus),
            ("--gpu-node-selector", config.gpu_node_selector),
            ("--gpu-type", config.gpu_type != GPU_TYPE and config.gpu_type)) if value]
        if given:
            return (f"{', '.join(given)} given with --profile cpu (no GPU): compile with "
                    "--profile gpu, or leave them out")
    elif config.gpu_node_selector and "=" not in config.gpu_node_selector.strip("="):
        return (f"--gpu-node-selector {config.gpu_node_selector}: expected label=value "
                "(e.g. cloud.google.com/gke-accelerator=nvidia-l4)")
    elif config.strategy == "one_device" and gpus(config) > 1:
        return (f"--strategy one_device trains on one of --trainer-gpus {config.trainer_gpus}: "
                "use --strategy auto or mirrored, or fewer GPUs")
    return ""


def resource_specs(config: PipelineConfig) -> dict[str, ResourceSpec]:
    """Component id -> its resource requests and limits."""
    trainer = ResourceSpec(cpu_limit=config.trainer_cpu,
                           memory_limit=_memory_gb(config.trainer_memory))
    if gpus(config):
        trainer.accelerator.type = config.gpu_type
        trainer.accelerator.count = gpus(config)
    data = ResourceSpec(cpu_limit=config.data_cpu, memory_limit=_memory_gb(config.data_memory))
    return {**dict.fromkeys(TRAINING_COMPONENTS, trainer), **dict.fromkeys(BEAM_COMPONENTS, data)}


def kubernetes_config(config: PipelineConfig, executor: str) -> k8s.KubernetesExecutorConfig:
    """Node selector and GPU toleration for the Trainer and Tuner under the gpu profile; the
    volume mount for every task."""
    result = k8s.KubernetesExecutorConfig()
    if executor in {f"{name}_executor" for name in TRAINING_COMPONENTS} and gpus(config):
        if config.gpu_node_selector:
            key, _, value = config.gpu_node_selector.partition("=")
            result.node_selector.labels[key] = value
        result.tolerations.append(k8s.Toleration(key=config.gpu_type, operator="Exists",
                                                 effect="NoSchedule"))
    if config.pvc_name:
        result.pvc_mount.append(k8s.PvcMount(constant=config.pvc_name,
                                             mount_path=config.pvc_mount_path))
    return result


def check_executors(spec: dict) -> None:
    """Raises ``ValueError`` unless open-source Kubeflow Pipelines can run every executor."""
    for executor, executor_spec in spec["deploymentSpec"]["executors"].items():
        kinds = set(executor_spec) - set(OPEN_SOURCE_EXECUTORS)
        if kinds:
            raise ValueError(f"executor {executor} is a {', '.join(sorted(kinds))} executor: "
                             f"open-source Kubeflow Pipelines runs only "
                             f"{' and '.join(OPEN_SOURCE_EXECUTORS)} executors")


def cluster_problem(config: PipelineConfig) -> str:
    """Why ``config`` cannot run on a cluster in one line, or ""."""
    scheme = config.pipeline_root.partition("://")[0] if "://" in config.pipeline_root else ""
    if scheme not in BACKEND_ROOTS:
        return (f"--pipeline-root {config.pipeline_root}: the open-source KFP backend accepts "
                f"only {', '.join(s + '://' for s in BACKEND_ROOTS)} pipeline roots (its "
                "default: minio://mlpipeline/v2/artifacts)")
    if config.uses_default_data:
        return ("no --data-root: the tasks cannot see this machine's embedded data; give the "
                "data's path on the volume (--pvc-name) or a gs:// path")
    mount = config.pvc_mount_path.rstrip("/") + "/"
    for option, path in (("--data-root", config.data_root),
                         ("--serving-dir", config.serving_dir)):
        if "://" not in path and not (config.pvc_name and path.startswith(mount)):
            return (f"{option} {path} is no path of the tasks: mount a volume (--pvc-name, "
                    f"--pvc-mount-path {config.pvc_mount_path}) and give a path under it")
    return ""


def credentials_needed(config: PipelineConfig) -> list[str]:
    """What the cluster must give the tasks to reach the object stores ``config`` names, a
    line each (the launcher's: kfp backend ``v2/config``, ``v2/objectstore``)."""
    lines = []
    if config.pipeline_root.startswith("s3://"):
        lines.append("s3:// pipeline root: the run's namespace needs the ConfigMap kfp-launcher "
                     "with providers.s3 naming a Secret of the bucket's keys (KFP >= 2.2), "
                     "else the pods' AWS credentials (environment or IRSA)")
    if any(path.startswith("gs://") for path in (config.pipeline_root, config.data_root)):
        lines.append("gs:// paths: the launcher stages gs:// inputs to /gcs and TensorFlow "
                     "reads gs:// itself: the pods' service account needs GCS read/write "
                     "(Workload Identity; kfp-launcher providers.gs serves the launcher only)")
    return lines


def engine_warnings(config: PipelineConfig) -> list[str]:
    """What a Beam engine outside the task pods needs of the pipeline root, a line each."""
    scheme = config.pipeline_root.partition("://")[0]
    if config.beam_mode == "dask" and scheme != "gs":
        return [f"warning: --beam-mode dask with a {scheme}:// pipeline root: the launcher "
                "stages its artifacts on each task pod's own disk, where the Dask workers do not "
                "write (they share it only on one machine); on a cluster give a gs:// root "
                "(kfp/README.md)"]
    return []


def set_retries(spec: dict, retries: int) -> None:
    """A retry policy of ``retries`` on every task, in place (none for 0): a failed or
    preempted pod need not fail the run."""
    for task in spec["root"]["dag"]["tasks"].values():
        task.pop("retryPolicy", None)
        if retries:
            task["retryPolicy"] = {"maxRetryCount": retries, **RETRY_BACKOFF}


def check_producers(spec: dict) -> None:
    """Raises ``ValueError`` where a task names a producer the DAG lacks: the backend's Argo
    compiler refuses the run ("failed to add implicit deps: unknown producer task")."""
    tasks = spec["root"]["dag"]["tasks"]
    for name, task in tasks.items():
        for kind in ("parameters", "artifacts"):
            for key, value in task.get("inputs", {}).get(kind, {}).items():
                source = value.get("taskOutputParameter") or value.get("taskOutputArtifact")
                if source and source["producerTask"] not in tasks:
                    raise ValueError(f"task {name} input {key}: unknown producer task "
                                     f"{source['producerTask']!r} in DAG")


def for_open_source(spec: dict) -> None:
    """Adapts TFX's spec to the open-source backend's rules, in place: producers named by
    their task names (TFX writes ``<id>_task`` for ``.future()[0].value`` inputs), each such
    parameter typed as its producer's output (TFX types it STRING: a served version 0 became
    ``"0"``), and every container running ``pipeline.kfp_entrypoint`` with the image's copy of
    the project."""
    tasks, components = spec["root"]["dag"]["tasks"], spec["components"]
    for task in tasks.values():
        definitions = components[task["componentRef"]["name"]]["inputDefinitions"]
        for key, value in task.get("inputs", {}).get("parameters", {}).items():
            source = value.get("taskOutputParameter")
            if not source:
                continue
            if source["producerTask"] not in tasks and \
                    source["producerTask"].removesuffix("_task") in tasks:
                source["producerTask"] = source["producerTask"].removesuffix("_task")
            producer = components[tasks[source["producerTask"]]["componentRef"]["name"]]
            definitions["parameters"][key]["parameterType"] = producer["outputDefinitions"][
                "parameters"][source["outputParameterKey"]]["parameterType"]
    executors = spec["deploymentSpec"]["executors"]
    for component in components.values():
        container = executors[component["executorLabel"]].get("container")
        if container:
            container["command"] = list(ENTRYPOINT)
            args = container["args"] = [arg.replace(SETUP_FILE, IMAGE_SETUP_FILE)
                                        for arg in container["args"]]
            args[args.index(INPUTS_SPEC_FLAG) + 1] = json.dumps(
                component.get("inputDefinitions", {}), indent=2, sort_keys=True)
    check_producers(spec)


def _to_stderr(text: str) -> None:  # stdout may be a command's JSON (ops.schedule --dry-run)
    print(text, file=sys.stderr)


def compile_pipeline(config: PipelineConfig, output: str, announce=_to_stderr) -> str:
    """Writes the KFP package for ``config`` to ``output``; returns its path. Raises
    ``ValueError`` with ``cluster_problem``'s reason, or naming the options to set when the
    model's input is left to data this machine cannot read. The input and classes left to
    the data are resolved here, once (``pipeline.data_shape``): the spec records them."""
    problem = cluster_problem(config) or profile_problem(config)
    if problem:
        raise ValueError(problem)
    if config.from_data:
        try:
            config, choice = data_shape.resolve(config)
        except UserError as err:
            raise ValueError(str(err)) from None
        data_shape.require_readable(config)
        announce("\n".join([choice.line(), *choice.hints]))
    for line in credentials_needed(config) + engine_warnings(config):
        announce(line)
    from tfx import v1 as tfx  # the training stack: only once there is something to compile

    from pipeline.pipeline import OBSERVERS, create_pipeline
    pipeline = create_pipeline(config)
    specs = resource_specs(config)
    for component in pipeline.components:
        if component.id in specs:
            component.with_platform_config(specs[component.id])
    with tempfile.TemporaryDirectory() as tmp:
        tfx.orchestration.experimental.KubeflowV2DagRunner(
            config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
                default_image=config.kfp_image, use_pipeline_spec_2_1=True),
            output_dir=tmp, output_filename="pipeline.json").run(pipeline)
        with open(os.path.join(tmp, "pipeline.json")) as f:
            job = json.load(f)
    spec = job["pipelineSpec"]
    spec["defaultPipelineRoot"] = config.pipeline_root
    for name, parameter in spec["root"]["inputDefinitions"]["parameters"].items():
        parameter.update(defaultValue=getattr(config, name), isOptional=True)
    for task in OBSERVERS:  # they read the world: a cached answer would be stale
        spec["root"]["dag"]["tasks"][task]["cachingOptions"] = {"enableCache": False}
    set_retries(spec, config.task_retries)
    check_executors(spec)
    for_open_source(spec)
    executors = {}
    for executor, executor_spec in spec["deploymentSpec"]["executors"].items():
        if "container" not in executor_spec:
            continue
        k8s_config = kubernetes_config(config, executor)
        if k8s_config.ByteSize():
            executors[executor] = json_format.MessageToDict(k8s_config)
    platform = {"platforms": {"kubernetes": {"deploymentSpec": {"executors": executors}}}}
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        yaml.safe_dump_all([spec] + ([platform] if executors else []), f, sort_keys=True)
    return output


def main(argv: list[str] | None = None) -> int:
    config = PipelineConfig.from_args(argv, prog="python -m pipeline.kubeflow_runner",
                                      description=__doc__.split("\n\n")[0])
    try:
        package = compile_pipeline(config, config.package_path)
    except ValueError as err:  # what cannot work on a cluster: a usage error
        print(f"python -m pipeline.kubeflow_runner: error: {err}", file=sys.stderr)
        return 2
    print(f"Kubeflow Pipelines package: {package} (image {config.kfp_image})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
