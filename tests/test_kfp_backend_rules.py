"""The KFP backend harness (tests/kfp_backend.py) against the Go functions it copies, on a
two-task package whose tasks are ``python -c`` scripts (no TFX, a few seconds in all).

Each expected value is what the Go code at the named tag returns for the same input
(kubeflow/pipelines ``backend/src``): ``PbValueToText`` is ``strconv.FormatFloat(v, 'f', -1,
64)``, ``KeyFromURI`` a plain prefix test against ``<root>/<pipeline>/<run id>``,
``DownloadBlob`` a listing of objects, ``validatePipelineJobInputs`` a kind check.
"""
from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.kfp_backend import (RELEASES, Backend, BackendError, Release, api_parameters,
                               check_store_provider, driver_value, key_from_uri,
                               kubernetes_config_problem, parse_bucket_config,
                               pb_value_to_text)

# The task: writes a file and an empty directory into each output artifact, reports what
# its input artifacts hold after the download, the text it got and its ExecutorInput's
# outputs; with ``elsewhere`` set, its ExecutorOutput moves the output there.
TASK = """
import json, os, sys
executor_input = json.loads(sys.argv[1])
pod, inputs = os.environ["KFP_POD_ROOT"], executor_input["inputs"]
outputs = executor_input["outputs"]
def local(uri):
    scheme, _, rest = uri.partition("://")
    return os.path.join(pod, {"gs": "gcs"}.get(scheme, scheme), rest)
seen, beside = [], []
for artifacts in inputs.get("artifacts", {}).values():
    root = local(artifacts["artifacts"][0]["uri"])
    seen += sorted(os.path.relpath(os.path.join(d, n), root)
                   for d, ds, fs in os.walk(root) for n in ds + fs)
    beside += sorted(os.listdir(os.path.dirname(root)))
result = {"parameterValues": {"text": inputs["parameterValues"].get("text", ""), "seen": seen,
                              "beside": beside, "outputs": outputs}, "artifacts": {}}
for key, artifacts in outputs.get("artifacts", {}).items():
    if key != "executor-logs":
        path = local(artifacts["artifacts"][0]["uri"])
        os.makedirs(os.path.join(path, "empty"), exist_ok=True)
        open(os.path.join(path, "data.txt"), "w").write("x")
        elsewhere = inputs["parameterValues"].get("elsewhere")
        if elsewhere:
            result["artifacts"][key] = {"artifacts": [{"uri": elsewhere}]}
os.makedirs(os.path.dirname(outputs["outputFile"]), exist_ok=True)
json.dump(result, open(outputs["outputFile"], "w"))
"""
ARTIFACT = {"artifactType": {"schemaTitle": "system.Artifact", "schemaVersion": "0.0.1"}}
OUTPUT_PARAMETERS = {"text": {"parameterType": "STRING"}, "seen": {"parameterType": "LIST"},
                     "beside": {"parameterType": "LIST"}, "outputs": {"parameterType": "STRUCT"}}


def _package(tmp_path, platform: dict | None = None) -> str:
    """``producer`` (a number root parameter into its STRING input ``text``; outputs
    ``data`` and ``data_run``, as the Trainer's ``model`` and ``model_run``) then
    ``consumer`` (``producer``'s ``data`` as its input)."""
    inputs = {"text": {"parameterType": "STRING"},
              "elsewhere": {"parameterType": "STRING", "isOptional": True}}
    spec = {
        "pipelineInfo": {"name": "tiny"}, "schemaVersion": "2.1.0", "sdkVersion": "test",
        "components": {
            "comp-producer": {"executorLabel": "exec-task",
                              "inputDefinitions": {"parameters": inputs},
                              "outputDefinitions": {"artifacts": {"data": ARTIFACT,
                                                                  "data_run": ARTIFACT},
                                                    "parameters": OUTPUT_PARAMETERS}},
            "comp-consumer": {"executorLabel": "exec-task",
                              "inputDefinitions": {"artifacts": {"data": ARTIFACT}},
                              "outputDefinitions": {"parameters": OUTPUT_PARAMETERS}}},
        "deploymentSpec": {"executors": {"exec-task": {"container": {
            "image": "python:3.11", "command": ["python", "-c", TASK], "args": ["{{$}}"]}}}},
        "root": {
            "inputDefinitions": {"parameters": {
                "number": {"parameterType": "NUMBER_INTEGER", "defaultValue": 0},
                "elsewhere": {"parameterType": "STRING", "defaultValue": ""}}},
            "dag": {"tasks": {
                "producer": {"componentRef": {"name": "comp-producer"},
                             "taskInfo": {"name": "producer"},
                             "inputs": {"parameters": {
                                 "text": {"componentInputParameter": "number"},
                                 "elsewhere": {"componentInputParameter": "elsewhere"}}}},
                "consumer": {"componentRef": {"name": "comp-consumer"},
                             "taskInfo": {"name": "consumer"},
                             "inputs": {"artifacts": {"data": {"taskOutputArtifact": {
                                 "producerTask": "producer",
                                 "outputArtifactKey": "data"}}}}}}}},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump_all([spec] + ([platform] if platform else [])))
    return str(path)


def _backend(tmp_path, release: str = "2.17") -> Backend:
    return Backend(tmp_path / f"cluster-{release}", release, preimported=False)


@pytest.mark.parametrize("value, text", [
    (0, "0"), (0.0, "0"), (60, "60"), (60.0, "60"), (0.003, "0.003"), (-2.5, "-2.5"),
    (1e21, "1000000000000000000000"), (1e-7, "0.0000001"), (-0.0, "-0"),
    (2 ** 53 + 1, "9007199254740992"), (True, "true"), (False, "false"), (None, ""),
    (float("inf"), "+Inf"), (float("nan"), "NaN")])
def test_pb_value_to_text_formats_as_strconv_format_float(value, text):
    assert pb_value_to_text(value) == text


def test_a_number_reaches_a_string_input_as_the_driver_writes_it(tmp_path):
    backend, package = _backend(tmp_path), _package(tmp_path)
    assert backend.create_run(package).tasks["producer"].parameters["text"] == "0"
    run = backend.create_run(package, {"number": 60})
    assert run.tasks["producer"].parameters["text"] == "60"
    with pytest.raises(BackendError, match="input parameter 'x' type mismatch: expect "
                                           "NUMBER_INTEGER, got string"):
        driver_value("x", "5", "NUMBER_INTEGER")


def test_the_api_server_refuses_a_root_parameter_of_another_kind(tmp_path):
    spec = yaml.safe_load(open(_package(tmp_path)))
    with pytest.raises(BackendError, match="input parameter elsewhere requires type string"):
        api_parameters(spec, {"elsewhere": 5})
    with pytest.raises(BackendError, match="number requires type double or integer"):
        api_parameters(spec, {"number": "5"})
    with pytest.raises(BackendError, match="number requires type double or integer"):
        api_parameters(spec, {"number": True})
    with pytest.raises(BackendError, match="not required by pipeline: numbr"):
        api_parameters(spec, {"numbr": 5})
    assert api_parameters(spec, {"number": 3}) == {"number": 3.0, "elsewhere": ""}
    with pytest.raises(BackendError, match="requires type string"):  # before any task
        _backend(tmp_path).create_run(_package(tmp_path), {"elsewhere": 5})
    assert not (tmp_path / "cluster-2.17" / "pods").exists()


def test_empty_directories_are_not_downloaded(tmp_path):
    backend = _backend(tmp_path)
    run = backend.create_run(_package(tmp_path))
    assert run.tasks["consumer"].parameters["seen"] == ["data.txt"]
    stored = backend.store_path(run.tasks["producer"].artifacts["data"].uri)
    assert sorted(p.name for p in stored.iterdir()) == ["data.txt"]  # nor uploaded


def test_an_output_outside_the_run_fails_its_task(tmp_path):
    backend, package = _backend(tmp_path), _package(tmp_path)
    with pytest.raises(BackendError, match="does not have expected bucket prefix "
                                           "'minio://mlpipeline/v2/artifacts/tiny/"):
        backend.create_run(package, {"elsewhere": "minio://mlpipeline/elsewhere/data"})
    bucket = parse_bucket_config("minio://mlpipeline/v2/artifacts/tiny/run1", Release("2.17"))
    assert key_from_uri(bucket, "minio://mlpipeline/v2/artifacts/tiny/run1/t/data", "data") \
        == "t/data"
    # a plain string prefix, as in Go: a sibling run whose id extends this one passes
    assert key_from_uri(bucket, "minio://mlpipeline/v2/artifacts/tiny/run10/x", "x") == "0/x"
    with pytest.raises(BackendError, match="has empty key"):
        key_from_uri(bucket, "minio://mlpipeline/v2/artifacts/tiny/run1", "data")


def test_the_pipeline_root_is_checked_where_each_release_checks_it(tmp_path):
    package = _package(tmp_path)
    with pytest.raises(BackendError, match="driver.RootDAG failed: Encountered unsupported "
                                           "provider in provider config mem"):
        _backend(tmp_path, "2.2").create_run(package, pipeline_root="mem://bucket/root")
    with pytest.raises(BackendError, match="unrecognized pipeline root format"):
        _backend(tmp_path, "2.17").create_run(package, pipeline_root="/local/path")
    # 2.0 and 2.1: no check in the root DAG driver; the first launcher cannot parse it
    with pytest.raises(BackendError, match="unsupported Cloud bucket: 'mem://bucket/root/"):
        _backend(tmp_path, "2.1").create_run(package, pipeline_root="mem://bucket/root")
    check_store_provider("gs://bucket")
    check_store_provider("s3://bucket/prefix")
    run = _backend(tmp_path, "2.0").create_run(package, pipeline_root="s3://bucket/root/")
    assert run.tasks["producer"].artifacts["data"].uri.startswith(
        f"s3://bucket/root/tiny/{run.id}/producer/")


@pytest.mark.parametrize("release", RELEASES, ids=lambda release: release.name)
def test_each_release_provisions_outputs_its_own_way(tmp_path, release):
    """Output URIs (salted from 2.4), ``executor-logs`` (from 2.5), artifact names and the
    ExecutorOutput file under the task root (from 2.15), each read back from the task."""
    backend = _backend(tmp_path, release.name)
    run = backend.create_run(_package(tmp_path))
    outputs = run.tasks["producer"].parameters["outputs"]
    data = outputs["artifacts"]["data"]["artifacts"][0]
    task_root = f"minio://mlpipeline/v2/artifacts/tiny/{run.id}/producer"
    salt = r"/[0-9a-f-]{36}" if release.version >= (2, 4) else ""
    assert re.fullmatch(re.escape(task_root) + salt + "/data", data["uri"]), data["uri"]
    assert ("executor-logs" in outputs["artifacts"]) == (release.version >= (2, 5))
    assert ("executor-logs" in run.tasks["producer"].artifacts) == (release.version >= (2, 5))
    assert data.get("name", "") == ("data" if release.version >= (2, 15) else "")
    expected_file = data["uri"].replace("minio://", "minio/").rsplit("/", 1)[0] + \
        "/output_metadata.json" if release.version >= (2, 15) \
        else "tmp/kfp_outputs/output_metadata.json"
    assert outputs["outputFile"].endswith(expected_file)
    assert run.tasks["consumer"].parameters["seen"] == ["data.txt"]
    assert run.tasks["consumer"].parameters["beside"] == (
        ["data"] if release.version >= (2, 17) else ["data", "data_run"])
    assert backend.store_path(data["uri"]).joinpath("data.txt").read_text() == "x"


TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
VOLUME = {"pvcMount": [{"constant": "tfx-image-data", "mountPath": "/mnt/data"}]}


def test_releases_before_2_5_parse_the_kubernetes_config_strictly(tmp_path):
    gpu = {**VOLUME, "tolerations": [TOLERATION],
           "nodeSelector": {"labels": {"accelerator": "nvidia-l4"}}}
    for release in RELEASES:
        assert kubernetes_config_problem(release, VOLUME) == ""
        assert (kubernetes_config_problem(release, gpu) == "") == (release.version >= (2, 1))
    assert kubernetes_config_problem(Release("2.0"), gpu) == \
        'unknown field "tolerations" in kubernetes_platform.KubernetesExecutorConfig'
    newer = {"pvcMount": [{"pvcNameParameter": {"runtimeValue": {"constant": "v"}},
                           "mount_path": "/mnt/data"}]}  # proto names parse too
    assert kubernetes_config_problem(Release("2.4"), newer) == \
        'unknown field "pvcNameParameter" in kubernetes_platform.PvcMount'
    assert kubernetes_config_problem(Release("2.5"), newer) == ""
    platform = {"platforms": {"kubernetes": {"deploymentSpec": {"executors": {
        "exec-task": {"tolerations": [TOLERATION]}}}}}}
    with pytest.raises(BackendError, match="failed to unmarshal Kubernetes config, error: "
                                           'unknown field "tolerations"'):
        _backend(tmp_path, "2.0").create_run(_package(tmp_path / "gpu", platform))
    run = _backend(tmp_path, "2.1").create_run(_package(tmp_path / "gpu", platform))
    assert json.dumps(run.tasks["consumer"].parameters["seen"]) == '["data.txt"]'


def test_recorded_artifacts_carry_the_release_s_custom_properties(tmp_path):
    for name, session in (("2.2", False), ("2.3", True)):
        run = _backend(tmp_path, name).create_run(_package(tmp_path))
        properties = run.tasks["producer"].artifacts["data"].properties
        assert properties["display_name"] == "data"
        assert ("store_session_info" in properties) == session
