"""Runs a compiled KFP v2 package the way the open-source backend does, on this machine.

Written from kubeflow/pipelines ``backend/src/v2`` (git tags 2.0.0 to 2.17.0). A ``Backend``
is one cluster of one release (``Release``: "2.0" to "2.17"); where the releases differ, the
convention is a ``Release`` property naming the Go code and the tag it changed in. Each step
names the code it stands for:

* run creation (``apiserver/template/v2_template.go`` ``validatePipelineJobInputs``): root
  parameters must be declared and given with their type (a number for a STRING parameter is
  refused); the pipeline root is the run's or the cluster default
  (``minio://mlpipeline/v2/artifacts``; the spec's ``defaultPipelineRoot`` is ignored);
* the Argo compiler (``argocompiler/dag.go``): every producer task a task names must be a
  task of the DAG (``failed to add implicit deps: unknown producer task``);
* the root DAG driver (``driver/root_dag.go``, from 2.2): the pipeline root parsed
  (``objectstore/config.go`` ``ParseBucketPathToConfig``) and its provider one of ``gs``,
  ``s3``, ``minio`` (``config/env.go`` ``GetStoreSessionInfo``: ``mem://`` is refused);
* the container drivers (``driver/driver.go``, ``driver/resolve.go``): the task's
  Kubernetes config parsed (strictly before 2.5); root parameters from the run or their
  defaults; task inputs from constants, root parameters and upstream output parameters,
  type-checked (a value consumed as STRING becomes ``PbValueToText``, a string consumed as a
  number is refused); upstream artifacts from MLMD with their id as ``name``, their custom
  properties as ``metadata`` (every number a double) and an empty ``instanceSchema``; outputs
  provisioned (``provisionOutputs``) under ``<root>/<pipeline>/<run id>/<task>[/<salt>]/<key>``,
  an ``executor-logs`` output while log publishing is on, parameter files under
  ``/tmp/kfp/outputs/``, and the ExecutorOutput file; the cache fingerprint
  (``cacheutils/cache.go``: input artifact names, input parameter values, output specs, image,
  command and args, PVC names) and its hits, which reuse the cached execution's outputs;
* launcher v2 (``component/launcher_v2.go``): the run's root parsed as its bucket
  (``ParseBucketConfig``), optional parameters' defaults added, ``{{$}}`` replaced by the
  ExecutorInput, input artifacts downloaded from the store to their pod-local paths
  (``/minio/<bucket>/<key>``, ``/s3/...``, ``/gcs/...``; ``DownloadBlob`` lists objects, so
  empty directories are not recreated), the command run with its log written to
  ``executor-logs``, output parameters from the ExecutorOutput (else their files), and output
  artifacts merged with the ExecutorOutput (its URI wins), uploaded from their local paths
  (files only; a missing path is skipped; a URI outside the run's root fails the task:
  ``KeyFromURI``) and recorded in MLMD.

The object store is a local folder (``minio://<bucket>/<key>`` is ``<store>/minio/<bucket>/<key>``)
and each task's pod a folder of its own, named to the task by ``KFP_POD_ROOT``; paths on the
PVC are this machine's paths. Each task runs as its own process: the container's command with
this virtualenv's ``python``; a ``python -m`` command as a fork of a process that has already
imported the training stack (tests/task_forker.py: the same process otherwise, 10-20 s less
per task), unless ``Backend(preimported=False)``.
"""
from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import decimal
import hashlib
import json
import math
import os
import posixpath
import re
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import yaml

CLUSTER_ROOT = "minio://mlpipeline/v2/artifacts"
LOCAL_MOUNTS = {"gs://": "gcs", "minio://": "minio", "s3://": "s3"}
NUMBER_TYPES = ("NUMBER_INTEGER", "NUMBER_DOUBLE")
TASK_NAME = re.compile(r"[a-zA-Z0-9][-a-zA-Z0-9]*")
# objectstore/config.go (object_store.go before 2.2) bucketPattern
BUCKET_PATTERN = re.compile(r"(^[a-z][a-z0-9]+:///?)([^/?]+)(/[^?]*)?(\?.+)?$")
# The driver's KubernetesExecutorConfig (kubernetes_platform/proto/kubernetes_executor_config
# .proto at the commit each release's go.mod pins; 2.5+ build it from the tree), the fields
# of the messages the compiler emits, proto names.
K8S_V20 = {  # bd9f74e34de6 (2.0.x)
    "KubernetesExecutorConfig": {"secret_as_volume", "secret_as_env", "pvc_mount",
                                 "node_selector"},
    "PvcMount": {"task_output_parameter", "constant", "component_input_parameter",
                 "mount_path"},
    "NodeSelector": {"labels"},
}
K8S_V21 = {  # 19a24e3e99db (2.1.x)
    **K8S_V20,
    "KubernetesExecutorConfig": K8S_V20["KubernetesExecutorConfig"] | {
        "pod_metadata", "image_pull_secret", "image_pull_policy", "config_map_as_volume",
        "config_map_as_env", "field_path_as_env", "tolerations"},
    "Toleration": {"key", "operator", "value", "effect", "toleration_seconds"},
}
K8S_V22 = {**K8S_V21, "KubernetesExecutorConfig": K8S_V21["KubernetesExecutorConfig"] | {
    "generic_ephemeral_volume", "node_affinity", "pod_affinity"}}  # 8b2a099e8c9f (2.2.x)
K8S_V23 = {**K8S_V22, "KubernetesExecutorConfig": K8S_V22["KubernetesExecutorConfig"] | {
    "enabled_shared_memory", "empty_dir_mounts"}}  # d911c8b73b49 (2.3.x, 2.4.x)
K8S_MESSAGES = {"pvc_mount": "PvcMount", "node_selector": "NodeSelector",
                "tolerations": "Toleration"}


@dataclasses.dataclass(frozen=True)
class Release:
    """The conventions of one KFP release ("2.0" ... "2.17"), each read from its Go code."""
    name: str

    @property
    def version(self) -> tuple[int, int]:
        return tuple(int(part) for part in self.name.split(".")[:2])

    @property
    def salted(self) -> bool:
        """Output URIs carry a random salt after the task name: ``provisionOutputs(...,
        uuid.NewString())`` in driver/driver.go from 2.4.0 (2.0.0-2.3.0: ``<task>/<key>``)."""
        return self.version >= (2, 4)

    @property
    def executor_logs(self) -> bool:
        """The driver adds an ``executor-logs`` output (``publish_logs``, default "true"):
        driver/driver.go ``provisionOutputs`` from 2.5.0; none before."""
        return self.version >= (2, 5)

    @property
    def task_root_outputs(self) -> bool:
        """Output artifacts carry their ``name`` and the ExecutorOutput file is
        ``<local task root>/output_metadata.json``: driver/driver.go ``provisionOutputs`` from
        2.15.0; through 2.14 no name and ``/tmp/kfp_outputs/output_metadata.json``
        (component/launcher_v2.go ``OutputMetadataFilepath``)."""
        return self.version >= (2, 15)

    @property
    def root_checked_by_driver(self) -> bool:
        """The root DAG driver parses the pipeline root and refuses providers other than gs,
        s3, minio (``GetStoreSessionInfo``: driver/driver.go and config/env.go from 2.2.0);
        before, only the first launcher's ``ParseBucketConfig`` reads it."""
        return self.version >= (2, 2)

    @property
    def bucket_schemes(self) -> tuple[str, ...]:
        """``ParseBucketConfig``'s schemes: objectstore/object_store.go 2.0.0, mem:// added in
        objectstore/config.go 2.2.0."""
        return ("gs://", "s3://", "minio://") + (("mem://",) if self.version >= (2, 2) else ())

    @property
    def session_info(self) -> bool:
        """``RecordArtifact`` adds a ``store_session_info`` custom property to each output
        (metadata/client.go from 2.3.0); ``display_name`` in every release."""
        return self.version >= (2, 3)

    @property
    def lists_siblings(self) -> bool:
        """``DownloadBlob`` lists the store by a plain prefix, so ``<key>`` also fetches the
        objects of ``<key>_run/...`` and writes them beside the download (``filepath.Rel``):
        objectstore/object_store.go through 2.16.0; 2.17.0 keeps only keys under the prefix
        (``isBlobKeyUnderPrefix``)."""
        return self.version < (2, 17)

    @property
    def kubernetes_fields(self) -> dict | None:
        """The fields the driver's strict parse of ``--kubernetes_config`` knows (cmd/driver/
        main.go ``jsonpb.UnmarshalString`` through 2.4); None from 2.5.0, whose
        ``util.UnmarshalString`` sets ``AllowUnknownFields``."""
        return {(2, 0): K8S_V20, (2, 1): K8S_V21, (2, 2): K8S_V22, (2, 3): K8S_V23,
                (2, 4): K8S_V23}.get(self.version)


RELEASES = tuple(Release(name) for name in (
    "2.0", "2.1", "2.2", "2.3", "2.4", "2.5", "2.14", "2.15", "2.16", "2.17"))


class BackendError(RuntimeError):
    """What the backend would report: a refused run or a failed task."""


def local_path(uri: str) -> str | None:
    """``LocalPathForURI`` relative to a pod's (or the store's) root; None for other schemes."""
    for scheme, mount in LOCAL_MOUNTS.items():
        if uri.startswith(scheme):
            return os.path.join(mount, uri[len(scheme):])
    return None


@dataclasses.dataclass
class Artifact:
    """An artifact in the backend's MLMD: id, URI, schema and custom properties."""
    id: int
    key: str
    uri: str
    schema: str
    properties: dict

    def runtime(self) -> dict:
        """``toRuntimeArtifact`` as the driver hands it to a consumer."""
        metadata = {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                    else v for k, v in self.properties.items()}
        return {"name": str(self.id), "uri": self.uri, "type": {"instanceSchema": ""},
                "metadata": metadata}


@dataclasses.dataclass
class TaskResult:
    state: str  # "EXECUTED" or "CACHED"
    parameters: dict
    artifacts: dict  # output key -> Artifact
    log: str = ""


@dataclasses.dataclass
class Run:
    id: str
    root: str
    tasks: dict[str, TaskResult]

    def executed(self) -> set[str]:
        return {name for name, task in self.tasks.items() if task.state == "EXECUTED"}


class Backend:
    """One cluster of one ``release``: its object store, MLMD (artifacts) and cache, kept
    across runs. ``forker``: another backend's ``task_forker()`` to share (else this one
    starts its own at the first task and ends it in ``close``)."""

    def __init__(self, work: Path, release: str = "2.17", publish_logs: bool = True,
                 parallelism: int = 2, preimported: bool = True, forker=None):
        self.store, self.pods = work / "store", work / "pods"
        self.release = Release(release)
        self.publish_logs = publish_logs and self.release.executor_logs
        self.parallelism, self.preimported = parallelism, preimported
        self.forker, self._own_forker = forker, forker is None
        self._forker_lock = threading.Lock()
        self.artifacts: list[Artifact] = []
        self.cache: dict[str, TaskResult] = {}

    def close(self) -> None:
        """Ends the task forker, if this backend started one."""
        if self.forker is not None and self._own_forker:
            self.forker.close()
            self.forker = None

    def task_forker(self):
        """The ``tests.task_forker.Forker`` running this cluster's tasks, started if need be."""
        from tests.task_forker import Forker
        with self._forker_lock:
            if self.forker is None:
                self.forker = Forker(dict(os.environ, PYTHONPATH=_project_root()))
        return self.forker

    def store_path(self, uri: str) -> Path:
        relative = local_path(uri)
        if relative is None:
            raise BackendError(f"unsupported storage scheme: {uri}")
        return self.store / relative

    # ---- run creation, the Argo compiler, the root DAG driver
    def create_run(self, package: str, parameters: dict | None = None,
                   pipeline_root: str = "", tasks: set[str] | None = None) -> Run:
        """Creates and runs a run of ``package`` (only ``tasks`` and their upstream tasks, if
        given); raises ``BackendError`` as the backend would fail it."""
        documents = list(yaml.safe_load_all(open(package)))
        spec, platform = documents[0], (documents[1] if len(documents) > 1 else {})
        values = api_parameters(spec, parameters or {})
        self._check_producers(spec)
        root = pipeline_root or CLUSTER_ROOT
        if self.release.root_checked_by_driver:
            check_store_provider(root)
        run = Run(id=uuid.uuid4().hex[:12], root=f"{root.rstrip('/')}/"
                  f"{spec['pipelineInfo']['name']}/", tasks={})
        run.root += run.id  # metadata/client.go GetPipeline: <root>/<pipeline>/<run id>
        k8s = platform.get("platforms", {}).get("kubernetes", {}).get(
            "deploymentSpec", {}).get("executors", {})
        self._run_dag(spec, k8s, values, run, tasks)
        return run

    @staticmethod
    def _check_producers(spec: dict) -> None:
        tasks = spec["root"]["dag"]["tasks"]
        for name, task in tasks.items():
            if not TASK_NAME.fullmatch(name) or len(name + "-driver") > 128:
                raise BackendError(f"invalid task name {name!r} (Argo's template names)")
            for kind, key in (("parameters", "taskOutputParameter"),
                              ("artifacts", "taskOutputArtifact")):
                for value in task.get("inputs", {}).get(kind, {}).values():
                    producer = value.get(key, {}).get("producerTask")
                    if producer is not None and producer not in tasks:
                        raise BackendError(f'compiling DAG "root": failed to add implicit '
                                           f'deps: unknown producer task "{producer}" in DAG')
            for upstream in task.get("dependentTasks", []):
                if upstream not in tasks:
                    raise BackendError(f'compiling DAG "root": dependent task "{upstream}" '
                                       'not found')

    # ---- the drivers and the launcher
    def _run_dag(self, spec: dict, k8s: dict, values: dict, run: Run,
                 only: set[str] | None) -> None:
        tasks = spec["root"]["dag"]["tasks"]
        pending = {name: tasks[name] for name in _with_upstream(tasks, only or set(tasks))}
        with concurrent.futures.ThreadPoolExecutor(self.parallelism) as pool:
            running = {}
            while pending or running:
                for name, task in list(pending.items()):
                    if all(up in run.tasks for up in _upstream(task)):
                        del pending[name]
                        running[pool.submit(self._run_task, spec, k8s, name, task, values,
                                            run)] = name
                if not running:
                    raise BackendError(f"tasks never ready: {sorted(pending)}")
                done, _ = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    run.tasks[name] = future.result()

    def _inputs(self, spec: dict, name: str, task: dict, values: dict, run: Run) -> dict:
        component = spec["components"][task["componentRef"]["name"]]
        definitions = component.get("inputDefinitions", {}).get("parameters", {})
        parameters = {}
        for key, source in task.get("inputs", {}).get("parameters", {}).items():
            if "runtimeValue" in source:
                value = source["runtimeValue"]["constant"]
            elif "componentInputParameter" in source:
                if source["componentInputParameter"] not in values:
                    continue
                value = values[source["componentInputParameter"]]
            else:
                producer = source["taskOutputParameter"]
                value = run.tasks[producer["producerTask"]].parameters[
                    producer["outputParameterKey"]]
            parameters[key] = driver_value(f"{name}.{key}", value,
                                           definitions[key]["parameterType"])
        for key, definition in definitions.items():
            if key not in parameters and not definition.get("isOptional"):
                raise BackendError(f"task {name}: neither value nor default value provided "
                                   f"for non-optional parameter {key!r}")
        artifacts = {}
        for key, source in task.get("inputs", {}).get("artifacts", {}).items():
            producer = source["taskOutputArtifact"]
            artifact = run.tasks[producer["producerTask"]].artifacts[
                producer["outputArtifactKey"]]
            artifacts[key] = {"artifacts": [artifact.runtime()]}
        return {"parameterValues": parameters, "artifacts": artifacts}

    def _outputs(self, component: dict, name: str, run: Run, pod: Path) -> dict:
        """``provisionOutputs`` of this release (see ``Release``)."""
        task_root = f"{run.root}/{name}" + (f"/{uuid.uuid4()}" if self.release.salted else "")
        definitions = component.get("outputDefinitions", {})
        artifacts = dict(definitions.get("artifacts", {}))
        if self.publish_logs:
            artifacts["executor-logs"] = {"artifactType": {"schemaTitle": "system.Artifact"}}
        named = self.release.task_root_outputs
        local_root = local_path(task_root) if named else None
        return {
            "artifacts": {key: {"artifacts": [{**({"name": key} if named else {}),
                                               "uri": f"{task_root}/{key}",
                                               "type": spec["artifactType"]}]}
                          for key, spec in artifacts.items()},
            "parameters": {key: {"outputFile": str(pod / "tmp/kfp/outputs" / key)}
                           for key in definitions.get("parameters", {})},
            "outputFile": str(pod / local_root / "output_metadata.json") if local_root
            else str(pod / "tmp/kfp_outputs/output_metadata.json"),
        }

    def _run_task(self, spec, k8s, name, task, values, run) -> TaskResult:
        component = spec["components"][task["componentRef"]["name"]]
        executor_label = component["executorLabel"]
        container = spec["deploymentSpec"]["executors"][executor_label]["container"]
        problem = kubernetes_config_problem(self.release, k8s.get(executor_label, {}))
        if problem:
            raise BackendError(f"task {name}: failed to unmarshal Kubernetes config, error: "
                               f"{problem}")
        pod = self.pods / run.id / name
        executor_input = {"inputs": self._inputs(spec, name, task, values, run),
                          "outputs": self._outputs(component, name, run, pod)}
        pvc_names = [m.get("constant", "") for m in k8s.get(executor_label, {}).get(
            "pvcMount", [])]
        output_types = {k: v["parameterType"] for k, v in component.get(
            "outputDefinitions", {}).get("parameters", {}).items()}
        fingerprint = _fingerprint(executor_input, output_types, container, pvc_names)
        if task.get("cachingOptions", {}).get("enableCache") and fingerprint in self.cache:
            cached = self.cache[fingerprint]
            return dataclasses.replace(cached, state="CACHED")
        result = self._launch(component, container, executor_input, pod,
                              parse_bucket_config(run.root, self.release))
        if task.get("cachingOptions", {}).get("enableCache"):
            self.cache[fingerprint] = result
        return result

    def _launch(self, component, container, executor_input, pod: Path,
                bucket: tuple[str, str, str]) -> TaskResult:
        with_defaults = copy.deepcopy(executor_input)
        for key, definition in component.get("inputDefinitions", {}).get(
                "parameters", {}).items():
            if key not in with_defaults["inputs"]["parameterValues"] and \
                    "defaultValue" in definition:
                with_defaults["inputs"]["parameterValues"][key] = definition["defaultValue"]
        for artifacts in executor_input["inputs"]["artifacts"].values():  # downloadArtifacts
            for artifact in artifacts["artifacts"]:
                relative = local_path(artifact["uri"])
                if relative is not None:
                    download_blob(self.store / relative, pod / relative,
                                  self.release.lists_siblings)
        for parameter in executor_input["outputs"]["parameters"].values():
            os.makedirs(os.path.dirname(parameter["outputFile"]), exist_ok=True)
        for artifacts in executor_input["outputs"]["artifacts"].values():
            relative = local_path(artifacts["artifacts"][0]["uri"])
            os.makedirs(pod / os.path.dirname(relative), exist_ok=True)
        os.makedirs(Path(executor_input["outputs"]["outputFile"]).parent, exist_ok=True)
        document = json.dumps(with_defaults)
        command = [sys.executable] + container["command"][1:] + [
            a.replace("{{$}}", document) for a in container["args"]]
        env = dict(os.environ, KFP_POD_ROOT=str(pod), PYTHONPATH=_project_root())
        returncode, log = self._execute(command, env, pod)
        if returncode:
            raise BackendError(f"task {component['executorLabel']} failed "
                               f"(exit {returncode}):\n{log[-4000:]}")
        output_file = Path(executor_input["outputs"]["outputFile"])
        output = json.loads(output_file.read_text()) if output_file.exists() else {}
        parameters = dict(output.get("parameterValues", {}))  # collectOutputParameters
        for key, parameter in executor_input["outputs"]["parameters"].items():
            if key not in parameters:
                kind = component["outputDefinitions"]["parameters"][key]["parameterType"]
                parameters[key] = _text_to_value(Path(parameter["outputFile"]).read_text(),
                                                 kind)
        artifacts = {key: self._upload(key, artifacts_list["artifacts"][0], output, log, pod,
                                       bucket)
                     for key, artifacts_list in executor_input["outputs"]["artifacts"].items()}
        return TaskResult("EXECUTED", parameters, artifacts, log)

    def _upload(self, key: str, provisioned: dict, output: dict, log: str, pod: Path,
                bucket: tuple[str, str, str]) -> Artifact:
        """``uploadOutputArtifacts`` for one output: merged, uploaded, recorded."""
        artifact = copy.deepcopy(provisioned)
        produced = output.get("artifacts", {}).get(key, {}).get("artifacts", [])
        if key == "executor-logs":
            relative = local_path(artifact["uri"])
            os.makedirs(pod / os.path.dirname(relative), exist_ok=True)
            (pod / relative).write_text(log)
        elif produced:  # mergeRuntimeArtifacts
            if produced[0].get("uri"):
                artifact["uri"] = produced[0]["uri"]
            artifact.setdefault("metadata", {}).update(produced[0].get("metadata", {}))
        relative = local_path(artifact["uri"])
        if relative is not None:  # else: "does not have a recognized storage URI", skipped
            key_from_uri(bucket, artifact["uri"], key)
            if (pod / relative).exists():  # a missing local path is skipped
                upload_blob(pod / relative, self.store / relative)
        return self._record(key, artifact)

    def _execute(self, command: list[str], env: dict, pod: Path) -> tuple[int, str]:
        """Runs the task's command in ``pod``: its exit code and log (stdout, then stderr)."""
        if not (self.preimported and command[1:2] == ["-m"]):
            process = subprocess.run(command, capture_output=True, text=True, env=env,
                                     cwd=pod, timeout=900)
            return process.returncode, process.stdout + process.stderr
        out, err = (pod.parent / f"{pod.name}.{stream}" for stream in ("stdout", "stderr"))
        code = self.task_forker().run(command[2], command[3:], str(pod), env, str(out), str(err),
                               timeout=900)
        log = out.read_text(errors="replace") + err.read_text(errors="replace")
        out.unlink()
        err.unlink()
        return code, log

    def _record(self, key: str, artifact: dict) -> Artifact:
        """``RecordArtifact``: metadata becomes custom properties, numbers doubles, with
        ``display_name`` (and ``store_session_info``) unless the metadata has them."""
        properties = {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                      else v for k, v in artifact.get("metadata", {}).items()}
        properties.setdefault("display_name", key)
        if self.release.session_info:
            properties.setdefault("store_session_info", "{}")
        recorded = Artifact(len(self.artifacts) + 1, key, artifact["uri"],
                            artifact["type"].get("instanceSchema")
                            or f"title: {artifact['type'].get('schemaTitle')}", properties)
        self.artifacts.append(recorded)
        return recorded


def api_parameters(spec: dict, given: dict) -> dict:
    """The run's root parameter values: ``validatePipelineJobInputs``
    (apiserver/template/v2_template.go, 2.0.0-2.17.0) on those given, defaults for the rest
    (the root DAG driver). Numbers are protobuf doubles."""
    declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise BackendError(f"parameter(s) provided are not required by pipeline: "
                           f"{', '.join(unknown)}")
    values = {}
    for name, definition in declared.items():
        if name in given:
            kind, value = definition["parameterType"], given[name]
            wanted = API_TYPES.get(kind)
            if wanted is None or not isinstance(value, wanted[0]) or \
                    (isinstance(value, bool) and kind != "BOOLEAN"):
                raise BackendError(f"input parameter {name} requires type "
                                   f"{wanted[1] if wanted else kind}, but the parameter value "
                                   "is not of that value type")
        elif definition.get("defaultValue") is not None:
            value = definition["defaultValue"]
        elif definition.get("isOptional"):
            continue
        else:
            raise BackendError(f"parameter {name} is not optional, yet has neither default "
                               "value nor user provided value")
        values[name] = float(value) if definition["parameterType"] in NUMBER_TYPES else value
    return values


API_TYPES = {"STRING": ((str,), "string"), "NUMBER_DOUBLE": ((int, float), "double or integer"),
             "NUMBER_INTEGER": ((int, float), "double or integer"),
             "BOOLEAN": ((bool,), "bool"), "LIST": ((list,), "list"),
             "STRUCT": ((dict,), "struct")}


def driver_value(name: str, value, kind: str):
    """The driver's type rule for one task input (driver/resolve.go ``resolveInputs``): a
    value consumed as STRING becomes ``PbValueToText``; any other type must match."""
    if kind == "STRING":
        return value if isinstance(value, str) else pb_value_to_text(value)
    actual = ("null" if value is None else "string" if isinstance(value, str)
              else "bool" if isinstance(value, bool)
              else "number" if isinstance(value, (int, float)) else None)
    expected = {"NUMBER_INTEGER": "number", "NUMBER_DOUBLE": "number", "BOOLEAN": "bool"}
    if value is None:
        raise BackendError(f"got null for input parameter {name!r}")
    if actual is not None and expected.get(kind, actual) != actual:
        raise BackendError(f"input parameter {name!r} type mismatch: expect {kind}, "
                           f"got {actual}")
    return float(value) if actual == "number" else value


def pb_value_to_text(value) -> str:
    """metadata/converter.go ``PbValueToText`` (2.0.0-2.17.0) for a null, bool or number:
    ``strconv.FormatFloat(v, 'f', -1, 64)``, the shortest decimal with no exponent."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, (int, float)):
        raise NotImplementedError("lists and structs: Go's json.Marshal of a structpb "
                                  "message, not emulated")
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        return "NaN" if math.isnan(number) else ("+Inf" if number > 0 else "-Inf")
    return format(decimal.Decimal(repr(number)).normalize(), "f")


def parse_bucket_config(root: str, release: Release) -> tuple[str, str, str]:
    """objectstore ``ParseBucketConfig`` (the launcher's bucket, from the run's root):
    ``(scheme, bucket, prefix)``."""
    match = BUCKET_PATTERN.match(root)
    if match is None:
        raise BackendError(f"parse bucket config failed: unrecognized pipeline root format: "
                           f"{root!r}")
    if match[1] not in release.bucket_schemes:
        raise BackendError(f"parse bucket config failed: unsupported Cloud bucket: {root!r}")
    prefix = (match[3] or "").lstrip("/")
    return match[1], match[2], prefix + ("/" if prefix and not prefix.endswith("/") else "")


def check_store_provider(root: str) -> None:
    """The root DAG driver (2.2+): ``GetStoreSessionInfo`` (config/env.go) parses the root
    (``ParseBucketPathToConfig``) and knows the minio, s3 and gs providers only."""
    scheme, _, _ = parse_bucket_config(root, Release("2.2"))
    if scheme not in ("gs://", "s3://", "minio://"):
        raise BackendError(f"driver.RootDAG failed: Encountered unsupported provider in "
                           f"provider config {scheme[:-3]}")


def key_from_uri(bucket: tuple[str, str, str], uri: str, output: str) -> str:
    """objectstore/config.go ``KeyFromURI``: the object key of ``uri`` in the run's bucket;
    the launcher fails the task when the URI is not under it."""
    scheme, name, prefix = bucket
    prefixed = scheme + posixpath.normpath(posixpath.join(name, prefix))
    if not uri.startswith(prefixed):
        raise BackendError(f"failed to upload output artifact {output!r}: URI {uri!r} does "
                           f"not have expected bucket prefix {prefixed!r}")
    key = uri[len(prefixed):].lstrip("/")
    if not key:
        raise BackendError(f"failed to upload output artifact {output!r}: URI {uri!r} has "
                           f"empty key given prefixed bucket {prefixed!r}")
    return key


def kubernetes_config_problem(release: Release, config: dict) -> str:
    """Why this release's driver cannot parse a task's Kubernetes config, or "": before 2.5
    jsonpb refuses a field its proto does not know (JSON or proto names)."""
    known = release.kubernetes_fields
    if known is None:
        return ""
    checks = [("KubernetesExecutorConfig", config)]
    for field, value in config.items():
        message = K8S_MESSAGES.get(_proto_name(field))
        if message in known:
            checks += [(message, item) for item in (value if isinstance(value, list)
                                                    else [value])]
    for message, fields in checks:
        for field in fields:
            if _proto_name(field) not in known[message]:
                return f'unknown field "{field}" in kubernetes_platform.{message}'
    return ""


def _proto_name(field: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m[1].lower(), field)


def download_blob(source: Path, target: Path, siblings: bool = False) -> None:
    """objectstore ``DownloadBlob``: the store's objects under ``source``, files only (a
    listing has no directories, so an empty one is not recreated); with ``siblings``, those
    of every key ``source`` is a prefix of too (``Release.lists_siblings``)."""
    if siblings and source.parent.is_dir():
        for sibling in source.parent.iterdir():
            if sibling.name.startswith(source.name) and sibling.name != source.name:
                download_blob(sibling, target.parent / sibling.name)
    if source.is_file():
        os.makedirs(target.parent, exist_ok=True)
        shutil.copy2(source, target)
        return
    for folder, _, files in os.walk(source):
        for file in files:
            relative = Path(folder, file).relative_to(source)
            os.makedirs((target / relative).parent, exist_ok=True)
            shutil.copy2(Path(folder, file), target / relative)


def upload_blob(source: Path, target: Path) -> None:
    """objectstore ``UploadBlob``: the files under a local path (no directories)."""
    download_blob(source, target)


def _with_upstream(tasks: dict, names: set[str]) -> set[str]:
    """``names`` and every task they depend on, transitively."""
    wanted, queue = set(), list(names)
    while queue:
        name = queue.pop()
        if name not in wanted:
            wanted.add(name)
            queue += _upstream(tasks[name])
    return wanted


def _upstream(task: dict) -> set[str]:
    producers = {v.get(k, {}).get("producerTask")
                 for kind, k in (("parameters", "taskOutputParameter"),
                                 ("artifacts", "taskOutputArtifact"))
                 for v in task.get("inputs", {}).get(kind, {}).values()}
    return (producers | set(task.get("dependentTasks", []))) - {None}


def _text_to_value(text: str, kind: str):
    if kind in NUMBER_TYPES:
        return float(text)
    if kind == "BOOLEAN":
        return text.strip() == "true"
    return text


def _fingerprint(executor_input: dict, output_types: dict, container: dict,
                 pvc_names: list) -> str:
    key = {
        "inputArtifactNames": {k: [a["name"] for a in v["artifacts"]]
                               for k, v in executor_input["inputs"]["artifacts"].items()},
        "inputParameterValues": executor_input["inputs"]["parameterValues"],
        "outputArtifactsSpec": {k: {"name": v["artifacts"][0].get("name", ""),
                                    "type": v["artifacts"][0]["type"]}
                                for k, v in executor_input["outputs"]["artifacts"].items()},
        "outputParametersSpec": output_types,
        "containerSpec": {"image": container["image"],
                          "cmdArgs": container["command"] + container["args"],
                          "pvcNames": pvc_names},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _project_root() -> str:
    return str(Path(__file__).resolve().parent.parent)
