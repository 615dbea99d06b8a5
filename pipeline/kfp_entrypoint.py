"""The command of every compiled Kubeflow task: ``python -m pipeline.kfp_entrypoint ARGS``.

TFX's v2 entrypoint (``kubeflow_v2_run_executor``, whose arguments this takes unchanged) was
written for Vertex AI Pipelines. The open-source KFP v2 backend (driver and launcher v2,
kubeflow/pipelines ``backend/src/v2``, releases 2.0 to 2.17) hands a task an ExecutorInput
that TFX cannot run. This module adapts it, then delegates to TFX. Each adaptation answers
one behaviour of the backend (the hooks into TFX's entrypoint: ``pipeline.tfx_entrypoint``):

1. **Untyped inputs**: the driver passes input artifacts with an empty ``instanceSchema``
   (it keeps only the schema title of MLMD types it knows), and TFX fails on
   ``None.get``. The type is taken from the component's own inputs spec, which every compiled
   command carries (``--json_serialized_inputs_spec_args``).
2. **The log output**: with log publishing on (the default) the driver adds an output
   artifact ``executor-logs`` typed ``system.Artifact``, which TFX cannot import. The
   launcher writes the pod's log into it itself; TFX never sees it.
3. **Object stores TensorFlow cannot reach**: under ``minio://`` roots (the cluster default)
   and ``s3://`` roots, the launcher downloads input artifacts to pod-local paths
   (``/minio/<bucket>/<key>``, ``/s3/<bucket>/<key>``) before the command and uploads the
   outputs from there after it. TFX reads and writes those local paths; the ExecutorOutput
   names the store's URIs again. ``gs://`` stays as it is: TensorFlow reads and writes GCS.
   For the task, each staged artifact also carries its store URI (``domain.contracts.STORE_URI``,
   never written back): what a component records for later (the pusher's ``model_uri``)
   names the store, not the pod.
4. **Exact ids**: artifact metadata crosses the backend as a protobuf ``Struct``, whose
   numbers are doubles; TFX's artifact ids are sha256-derived int64s. Integers beyond 2**53
   travel as decimal strings and are read back as integers.
"""
from __future__ import annotations

import json
import os
import sys

from domain.contracts import STORE_URI
from pipeline import tfx_entrypoint

# The launcher's pod-local mount of each store it stages (KFP's launcher v2 and SDK executor).
STAGED_STORES = {"minio://": "/minio/", "s3://": "/s3/"}
LOG_OUTPUT = "executor-logs"
EXACT_FLOAT = 2 ** 53  # beyond this a double cannot hold every integer
# The filesystem root under which the launcher's mounts are; a harness may stage a pod in a
# folder.
POD_ROOT_ENV = "KFP_POD_ROOT"


def local_path(uri: str, pod_root: str = "/") -> str:
    """Where the launcher stages ``uri`` in the pod (``uri`` itself for other schemes)."""
    for scheme, mount in STAGED_STORES.items():
        if uri.startswith(scheme):
            return os.path.join(pod_root, mount.lstrip("/"), uri[len(scheme):])
    return uri


def _type_of(inputs_spec: dict, key: str) -> dict:
    return inputs_spec.get("artifacts", {}).get(key, {}).get("artifactType", {})


def adapt(executor_input: dict, inputs_spec: dict, pod_root: str = "/",
          ) -> tuple[dict, dict[str, str]]:
    """The ExecutorInput TFX can run (adaptations 1 to 3), and each staged local path's URI
    in the store (inputs and outputs)."""
    adapted = json.loads(json.dumps(executor_input))
    remote = {}
    for key, artifacts in adapted.get("inputs", {}).get("artifacts", {}).items():
        for artifact in artifacts.get("artifacts", []):
            if not artifact.get("type", {}).get("schemaTitle") and \
                    not artifact.get("type", {}).get("instanceSchema"):
                artifact["type"] = _type_of(inputs_spec, key)
            _stage(artifact, remote, pod_root)
    outputs = adapted.get("outputs", {}).get("artifacts", {})
    outputs.pop(LOG_OUTPUT, None)
    for artifacts in outputs.values():
        for artifact in artifacts.get("artifacts", []):
            _stage(artifact, remote, pod_root)
    return adapted, remote


def _stage(artifact: dict, remote: dict[str, str], pod_root: str) -> None:
    """Points ``artifact`` at its pod-local path, noting its store URI in ``remote``."""
    local = local_path(artifact.get("uri", ""), pod_root)
    if local != artifact.get("uri", ""):
        remote[local] = artifact["uri"]
    artifact["uri"] = local


def _store_uris(artifacts: dict, remote: dict[str, str]) -> None:
    """Sets ``STORE_URI`` on the parsed artifacts the launcher staged."""
    for artifact in (a for values in artifacts.values() for a in values):
        if artifact.uri in remote:
            artifact.set_string_custom_property(STORE_URI, remote[artifact.uri])


def _exact_ids_in(artifacts: dict) -> None:
    """Adaptation 4, reading: decimal strings of integers beyond 2**53 become integers."""
    for artifact in (a for values in artifacts.values() for a in values):
        proto = type(artifact.mlmd_artifact)()
        proto.CopyFrom(artifact.mlmd_artifact)
        for key, value in proto.custom_properties.items():
            text = artifact.get_json_value_custom_property(key) \
                if value.HasField("struct_value") else None
            if isinstance(text, str) and text.lstrip("-").isdigit() and \
                    abs(int(text)) >= EXACT_FLOAT:
                value.int_value = int(text)
        artifact.set_mlmd_artifact(proto)


def _exact_ids_out(runtime_artifact, artifact) -> None:
    """Adaptation 4, writing: integers beyond 2**53 as decimal strings."""
    prefix = "custom:"  # TFX's prefix for a custom property named like a property
    for values, custom in ((artifact.mlmd_artifact.properties, False),
                           (artifact.mlmd_artifact.custom_properties, True)):
        for key, value in values.items():
            if value.HasField("int_value") and abs(value.int_value) >= EXACT_FLOAT:
                name = prefix + key if custom and key in artifact.artifact_type.properties \
                    else key
                runtime_artifact.metadata[name] = str(value.int_value)


def run(args, beam_args: list[str], pod_root: str = "/") -> None:
    """Adapts the ExecutorInput in ``args`` (TFX's entrypoint arguments, parsed) and runs the
    executor."""
    inputs_spec = json.loads(getattr(args, "json_serialized_inputs_spec_args", None) or "{}")
    executor_input, remote = adapt(json.loads(args.json_serialized_invocation_args),
                                   inputs_spec, pod_root)
    args.json_serialized_invocation_args = json.dumps(executor_input)

    def parsed(artifacts):
        _exact_ids_in(artifacts)
        _store_uris(artifacts, remote)

    def translated(result, outputs):
        for key, artifact_list in result.items():
            for runtime_artifact, artifact in zip(artifact_list.artifacts, outputs[key]):
                runtime_artifact.uri = remote.get(runtime_artifact.uri, runtime_artifact.uri)
                if STORE_URI in runtime_artifact.metadata:  # the task's alone
                    del runtime_artifact.metadata[STORE_URI]
                _exact_ids_out(runtime_artifact, artifact)

    tfx_entrypoint.run_executor(args, beam_args, parsed, translated)


def main() -> None:
    from absl import app
    app.run(lambda parsed: run(*parsed, os.environ.get(POD_ROOT_ENV, "/")),
            flags_parser=tfx_entrypoint.parse_flags)


if __name__ == "__main__":
    sys.exit(main())
