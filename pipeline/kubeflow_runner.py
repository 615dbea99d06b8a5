"""Compile the pipeline for Kubeflow Pipelines v2: ``python -m pipeline.kubeflow_runner``.

The same ``create_pipeline(config)`` as the local runner, compiled by TFX's
KubeflowV2DagRunner into a KFP package (YAML: the pipeline spec, then the Kubernetes platform
spec). Per-task resources come from TFX's platform config (the Trainer's GPUs, CPU and memory;
CPU and memory for the Beam components); node selector, GPU tolerations and an optional volume
mount from the kfp-kubernetes executor config. Paths (``--data-root``, ``--pipeline-root``,
``--serving-dir``) are the cluster's (GCS or the mounted volume; the serving dir always a
volume), and ``--beam-mode``/``--beam-args`` pick the Beam runner of the data components.

The package runs on open-source Kubeflow Pipelines: only container executors (compiling
fails on any other kind), the observer steps never cached, and the run-time parameters
(``pipeline.pipeline.RUN_TIME_PARAMETERS``) declared as root inputs defaulting to the
config's values.
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
from tfx import v1 as tfx

from pipeline.config import PipelineConfig
from pipeline.pipeline import OBSERVERS, create_pipeline

ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
# They train models: GPUs, CPU and memory of the trainer_* options, on GPU nodes.
TRAINING_COMPONENTS = ("Trainer", "Tuner")
OPEN_SOURCE_EXECUTORS = ("container", "importer")
BEAM_COMPONENTS = ("ImportExampleGen", "ImageValidator", "StatisticsGen", "Transform",
                   "Evaluator")


def _memory_gb(text: str) -> float:
    units = {"G": 1.0, "Gi": 1.073741824, "M": 1e-3, "Mi": 1.048576e-3}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * units[unit]
    return float(text)


def resource_specs(config: PipelineConfig) -> dict[str, ResourceSpec]:
    """Component id -> its resource requests and limits."""
    trainer = ResourceSpec(cpu_limit=config.trainer_cpu,
                           memory_limit=_memory_gb(config.trainer_memory))
    if config.trainer_gpus:
        trainer.accelerator.type = config.gpu_type
        trainer.accelerator.count = config.trainer_gpus
    data = ResourceSpec(cpu_limit=config.data_cpu, memory_limit=_memory_gb(config.data_memory))
    return {**dict.fromkeys(TRAINING_COMPONENTS, trainer), **dict.fromkeys(BEAM_COMPONENTS, data)}


def kubernetes_config(config: PipelineConfig, executor: str) -> k8s.KubernetesExecutorConfig:
    """Node selector and GPU toleration for the Trainer and Tuner; the volume mount for every
    task."""
    result = k8s.KubernetesExecutorConfig()
    if executor in {f"{name}_executor" for name in TRAINING_COMPONENTS} and config.trainer_gpus:
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


def compile_pipeline(config: PipelineConfig, output: str) -> str:
    """Writes the KFP package for ``config`` to ``output``; returns its path."""
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
    check_executors(spec)
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
    print(f"Kubeflow Pipelines package: {compile_pipeline(config, config.package_path)} "
          f"(image {config.kfp_image})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
