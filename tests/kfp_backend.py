"""Runs a compiled KFP v2 package the way the open-source backend does, on this machine.

Written from kubeflow/pipelines ``backend/src/v2`` (the same behaviour in releases 2.0 to
2.17); each step names the code it stands for:

* run creation: the pipeline root is the run's or the cluster default
  (``minio://mlpipeline/v2/artifacts``; the spec's ``defaultPipelineRoot`` is ignored), with
  ``gs``, ``s3``, ``minio`` or ``mem`` schemes; root parameters must be declared;
* the Argo compiler (``argocompiler/dag.go``): every producer task a task names must be a
  task of the DAG (``failed to add implicit deps: unknown producer task``);
* the drivers (``driver/driver.go``, ``driver/resolve.go``): root parameters from the run or
  their defaults; task inputs from constants, root parameters and upstream output parameters,
  type-checked (a number consumed as STRING becomes its text, a string consumed as a number
  is refused); upstream artifacts from MLMD with their id as ``name``, their custom properties
  as ``metadata`` (every number a double) and an empty ``instanceSchema``; outputs provisioned
  under ``<root>/<pipeline>/<run id>/<task>/<salt>/<key>``, an ``executor-logs`` output while
  log publishing is on, parameter files under ``/tmp/kfp/outputs/``, and the ExecutorOutput
  file in the local task root; the cache fingerprint (``cacheutils/cache.go``: input artifact
  names, input parameter values, output specs, image, command and args, PVC names) and its
  hits, which reuse the cached execution's outputs;
* launcher v2 (``component/launcher_v2.go``): optional parameters' defaults added, ``{{$}}``
  replaced by the ExecutorInput, input artifacts downloaded from the store to their pod-local
  paths (``/minio/<bucket>/<key>``, ``/s3/...``, ``/gcs/...``), the command run with its log
  written to ``executor-logs``, output parameters from the ExecutorOutput (else their files),
  and output artifacts merged with the ExecutorOutput (its URI wins), uploaded from their
  local paths (a missing path is skipped) and recorded in MLMD.

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
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import yaml

CLUSTER_ROOT = "minio://mlpipeline/v2/artifacts"
ROOT_SCHEMES = ("gs", "s3", "minio", "mem")
LOCAL_MOUNTS = {"gs://": "gcs", "minio://": "minio", "s3://": "s3"}
NUMBER_TYPES = ("NUMBER_INTEGER", "NUMBER_DOUBLE")
TASK_NAME = re.compile(r"[a-zA-Z0-9][-a-zA-Z0-9]*")


_FORKER_LOCK = threading.Lock()


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
        metadata.setdefault("display_name", self.key)
        metadata.setdefault("store_session_info", "{}")
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
    """One cluster: its object store, MLMD (artifacts) and cache, kept across runs."""

    def __init__(self, work: Path, publish_logs: bool = True, parallelism: int = 2,
                 preimported: bool = True):
        self.store, self.pods = work / "store", work / "pods"
        self.publish_logs, self.parallelism = publish_logs, parallelism
        self.preimported, self.forker = preimported, None
        self.artifacts: list[Artifact] = []
        self.cache: dict[str, TaskResult] = {}

    def close(self) -> None:
        """Ends the task forker, if one was started."""
        if self.forker is not None:
            self.forker.close()
            self.forker = None

    def store_path(self, uri: str) -> Path:
        relative = local_path(uri)
        if relative is None:
            raise BackendError(f"unsupported storage scheme: {uri}")
        return self.store / relative

    # ---- run creation and the Argo compiler
    def create_run(self, package: str, parameters: dict | None = None,
                   pipeline_root: str = "") -> Run:
        """Creates and runs a run of ``package``; raises ``BackendError`` as the backend
        would fail it."""
        documents = list(yaml.safe_load_all(open(package)))
        spec, platform = documents[0], (documents[1] if len(documents) > 1 else {})
        root = pipeline_root or CLUSTER_ROOT
        if root.partition("://")[0] not in ROOT_SCHEMES or "://" not in root:
            raise BackendError(f"invalid pipeline root {root!r}")
        values = self._root_parameters(spec, parameters or {})
        self._check_producers(spec)
        run = Run(id=uuid.uuid4().hex[:12], root=f"{root.rstrip('/')}/"
                  f"{spec['pipelineInfo']['name']}/", tasks={})
        run.root += run.id
        pvcs = platform.get("platforms", {}).get("kubernetes", {}).get(
            "deploymentSpec", {}).get("executors", {})
        self._run_dag(spec, pvcs, values, run)
        return run

    @staticmethod
    def _root_parameters(spec: dict, given: dict) -> dict:
        declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
        unknown = set(given) - set(declared)
        if unknown:
            raise BackendError(f"unrecognized input parameters {sorted(unknown)}")
        values = {}
        for name, definition in declared.items():
            value = given.get(name, definition.get("defaultValue"))
            if value is None:
                if definition.get("isOptional"):
                    continue
                raise BackendError(f"neither value nor default value provided for "
                                   f"non-optional parameter {name!r}")
            values[name] = _typed(name, value, definition["parameterType"])
        return values

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
    def _run_dag(self, spec: dict, pvcs: dict, values: dict, run: Run) -> None:
        tasks = spec["root"]["dag"]["tasks"]
        pending = dict(tasks)
        with concurrent.futures.ThreadPoolExecutor(self.parallelism) as pool:
            running = {}
            while pending or running:
                for name, task in list(pending.items()):
                    if all(up in run.tasks for up in self._upstream(task)):
                        del pending[name]
                        running[pool.submit(self._run_task, spec, pvcs, name, task, values,
                                            run)] = name
                if not running:
                    raise BackendError(f"tasks never ready: {sorted(pending)}")
                done, _ = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    run.tasks[name] = future.result()

    @staticmethod
    def _upstream(task: dict) -> set[str]:
        producers = {v.get(k, {}).get("producerTask")
                     for kind, k in (("parameters", "taskOutputParameter"),
                                     ("artifacts", "taskOutputArtifact"))
                     for v in task.get("inputs", {}).get(kind, {}).values()}
        return (producers | set(task.get("dependentTasks", []))) - {None}

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
            parameters[key] = _typed(f"{name}.{key}", value, definitions[key]["parameterType"])
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
        task_root = f"{run.root}/{name}/{uuid.uuid4().hex[:8]}"
        definitions = component.get("outputDefinitions", {})
        artifacts = dict(definitions.get("artifacts", {}))
        if self.publish_logs:
            artifacts["executor-logs"] = {"artifactType": {"schemaTitle": "system.Artifact"}}
        local_root = local_path(task_root)
        return {
            "artifacts": {key: {"artifacts": [{"name": key, "uri": f"{task_root}/{key}",
                                               "type": spec["artifactType"]}]}
                          for key, spec in artifacts.items()},
            "parameters": {key: {"outputFile": str(pod / "tmp/kfp/outputs" / key)}
                           for key in definitions.get("parameters", {})},
            "outputFile": str(pod / local_root / "output_metadata.json") if local_root
            else str(pod / "tmp/kfp_outputs/output_metadata.json"),
        }

    def _run_task(self, spec, pvcs, name, task, values, run) -> TaskResult:
        component = spec["components"][task["componentRef"]["name"]]
        executor_label = component["executorLabel"]
        container = spec["deploymentSpec"]["executors"][executor_label]["container"]
        pod = self.pods / run.id / name
        executor_input = {"inputs": self._inputs(spec, name, task, values, run),
                          "outputs": self._outputs(component, name, run, pod)}
        pvc_names = [m.get("constant", "") for m in pvcs.get(executor_label, {}).get(
            "pvcMount", [])]
        output_types = {k: v["parameterType"] for k, v in component.get(
            "outputDefinitions", {}).get("parameters", {}).items()}
        fingerprint = _fingerprint(executor_input, output_types, container, pvc_names)
        if task.get("cachingOptions", {}).get("enableCache") and fingerprint in self.cache:
            cached = self.cache[fingerprint]
            return dataclasses.replace(cached, state="CACHED")
        result = self._launch(component, container, executor_input, pod)
        if task.get("cachingOptions", {}).get("enableCache"):
            self.cache[fingerprint] = result
        return result

    def _launch(self, component, container, executor_input, pod: Path) -> TaskResult:
        with_defaults = copy.deepcopy(executor_input)
        for key, definition in component.get("inputDefinitions", {}).get(
                "parameters", {}).items():
            if key not in with_defaults["inputs"]["parameterValues"] and \
                    "defaultValue" in definition:
                with_defaults["inputs"]["parameterValues"][key] = definition["defaultValue"]
        for artifacts in executor_input["inputs"]["artifacts"].values():  # downloadArtifacts
            for artifact in artifacts["artifacts"]:
                relative = local_path(artifact["uri"])
                source = self.store / relative if relative else None
                if source is not None and source.exists():
                    _copy(source, pod / relative)
        for parameter in executor_input["outputs"]["parameters"].values():
            os.makedirs(os.path.dirname(parameter["outputFile"]), exist_ok=True)
        for artifacts in executor_input["outputs"]["artifacts"].values():
            relative = local_path(artifacts["artifacts"][0]["uri"])
            os.makedirs(pod / os.path.dirname(relative), exist_ok=True)
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
        artifacts = {}
        for key, artifacts_list in executor_input["outputs"]["artifacts"].items():
            artifact = copy.deepcopy(artifacts_list["artifacts"][0])
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
            if relative is None:
                raise BackendError(f"output {key}: no recognized storage URI "
                                   f"{artifact['uri']!r}: nothing uploaded")
            if (pod / relative).exists():  # a missing local path is skipped
                _copy(pod / relative, self.store / relative)
            artifacts[key] = self._record(key, artifact)
        return TaskResult("EXECUTED", parameters, artifacts, log)

    def _execute(self, command: list[str], env: dict, pod: Path) -> tuple[int, str]:
        """Runs the task's command in ``pod``: its exit code and log (stdout, then stderr)."""
        if not (self.preimported and command[1:2] == ["-m"]):
            process = subprocess.run(command, capture_output=True, text=True, env=env,
                                     cwd=pod, timeout=900)
            return process.returncode, process.stdout + process.stderr
        from tests.task_forker import Forker
        with _FORKER_LOCK:
            if self.forker is None:
                self.forker = Forker(dict(os.environ, PYTHONPATH=_project_root()))
        out, err = (pod.parent / f"{pod.name}.{stream}" for stream in ("stdout", "stderr"))
        code = self.forker.run(command[2], command[3:], str(pod), env, str(out), str(err),
                               timeout=900)
        log = out.read_text(errors="replace") + err.read_text(errors="replace")
        out.unlink()
        err.unlink()
        return code, log

    def _record(self, key: str, artifact: dict) -> Artifact:
        """``RecordArtifact``: metadata becomes custom properties, numbers doubles."""
        properties = {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                      else v for k, v in artifact.get("metadata", {}).items()}
        recorded = Artifact(len(self.artifacts) + 1, key, artifact["uri"],
                            artifact["type"].get("instanceSchema")
                            or f"title: {artifact['type'].get('schemaTitle')}", properties)
        self.artifacts.append(recorded)
        return recorded


def _typed(name: str, value, kind: str):
    """The API server's and the driver's type rules for one parameter value: a number or a
    string consumed as STRING becomes text, anything else must already have its type."""
    if kind == "STRING":
        return value if isinstance(value, str) else json.dumps(value)
    if kind in NUMBER_TYPES:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BackendError(f"input parameter {name!r} type mismatch: expect {kind}, "
                               f"got {type(value).__name__}")
        return float(value)  # a protobuf Value: every number is a double
    if kind == "BOOLEAN" and not isinstance(value, bool):
        raise BackendError(f"input parameter {name!r} type mismatch: expect BOOLEAN")
    return value


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
        "outputArtifactsSpec": {k: {"name": v["artifacts"][0]["name"],
                                    "type": v["artifacts"][0]["type"]}
                                for k, v in executor_input["outputs"]["artifacts"].items()},
        "outputParametersSpec": output_types,
        "containerSpec": {"image": container["image"],
                          "cmdArgs": container["command"] + container["args"],
                          "pvcNames": pvc_names},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _copy(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
    else:
        os.makedirs(target.parent, exist_ok=True)
        shutil.copy2(source, target)


def _project_root() -> str:
    return str(Path(__file__).resolve().parent.parent)
