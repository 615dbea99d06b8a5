"""``python -m ops.cluster_check`` against recorded answers: the KFP v2beta1 API and a registry
v2 API on real loopback HTTP servers, and a ``kubectl`` on PATH that prints recorded JSON."""
from __future__ import annotations

import base64
import json
import os
import stat
import sys
from http.server import BaseHTTPRequestHandler

import pytest

from ops import cluster_check
from tests.kfp_contract_server import KfpContractServer, LoopbackServer

DIGEST = "sha256:" + "ab" * 32
REPOSITORY = "ml/tfx-image-pipeline"

# As `kubectl get -o json` prints them (trimmed of managedFields).
PVC = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
       "metadata": {"name": "tfx-image-data", "namespace": "kubeflow"},
       "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "50Gi"}},
                "storageClassName": "nfs-client", "volumeMode": "Filesystem",
                "volumeName": "pvc-3f1c"},
       "status": {"accessModes": ["ReadWriteMany"], "capacity": {"storage": "50Gi"},
                  "phase": "Bound"}}
MINIO_SECRET = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "mlpipeline-minio-artifact", "namespace": "kubeflow"},
                "data": {"accesskey": "bWluaW8=", "secretkey": "bWluaW8xMjM="}}
S3_LAUNCHER = {"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "kfp-launcher", "namespace": "kubeflow"},
               "data": {"defaultPipelineRoot": "s3://ml-artifacts/v2/artifacts",
                        "providers": "s3:\n  default:\n    endpoint: s3.amazonaws.com\n"
                                     "    region: eu-west-1\n    credentials:\n"
                                     "      fromEnv: false\n      secretRef:\n"
                                     "        secretName: aws-s3-creds\n"
                                     "        accessKeyKey: AWS_ACCESS_KEY_ID\n"
                                     "        secretKeyKey: AWS_SECRET_ACCESS_KEY\n"}}
S3_SECRET = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
             "metadata": {"name": "aws-s3-creds", "namespace": "kubeflow"},
             "data": {"AWS_ACCESS_KEY_ID": "QUtJQQ==", "AWS_SECRET_ACCESS_KEY": "c2VjcmV0"}}

FAKE_KUBECTL = """#!{python}
# Prints the recorded object for `get KIND NAME`, or kubectl's NotFound; logs its arguments.
import json, os, sys
args = sys.argv[1:]
with open(os.path.join({folder!r}, "calls.jsonl"), "a") as log:
    log.write(json.dumps(args) + "\\n")
kind, name = args[args.index("get") + 1:args.index("get") + 3]
path = os.path.join({folder!r}, f"{{kind}}.{{name}}.json")
if not os.path.exists(path):
    sys.stderr.write(f'Error from server (NotFound): {{kind}}s "{{name}}" not found\\n')
    sys.exit(1)
sys.stdout.write(open(path).read())
"""


@pytest.fixture
def kube(tmp_path, monkeypatch):
    """A folder of recorded objects, ``kind.name.json``, served by a fake kubectl on PATH."""
    folder = tmp_path / "kube"
    folder.mkdir()
    script = folder / "kubectl"
    script.write_text(FAKE_KUBECTL.format(python=sys.executable, folder=str(folder)))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")

    def record(kind: str, obj: dict) -> None:
        (folder / f"{kind}.{obj['metadata']['name']}.json").write_text(json.dumps(obj))

    record.calls = lambda: [json.loads(line) for line in
                            (folder / "calls.jsonl").read_text().splitlines()]
    return record


class Registry(LoopbackServer):
    """A registry v2 API on loopback: HEAD of a manifest, Docker's bearer-token flow."""

    def __init__(self, tags: set[str], credentials: tuple[str, str] | None = None):
        self.tags, self.credentials, self.requests = tags, credentials, []
        super().__init__(self._handler())
        self.host = f"127.0.0.1:{self.port}"

    def _handler(self):
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, code: int, headers: dict, body: bytes = b"") -> None:
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self):  # the token service
                registry.requests.append(("GET", self.path, dict(self.headers)))
                user, password = registry.credentials or ("", "")
                basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
                if registry.credentials and self.headers.get("Authorization") != basic:
                    return self._answer(401, {})
                self._answer(200, {"Content-Type": "application/json"},
                             json.dumps({"token": "t0ken"}).encode())

            def do_HEAD(self):
                registry.requests.append(("HEAD", self.path, dict(self.headers)))
                if registry.credentials and self.headers.get("Authorization") != "Bearer t0ken":
                    challenge = (f'Bearer realm="http://{registry.host}/token",service="reg",'
                                 f'scope="repository:{REPOSITORY}:pull"')
                    return self._answer(401, {"WWW-Authenticate": challenge})
                tag = self.path.rsplit("/manifests/", 1)[-1]
                if self.path.startswith(f"/v2/{REPOSITORY}/manifests/") and tag in registry.tags:
                    return self._answer(200, {"Docker-Content-Digest": DIGEST})
                self._answer(404, {})

            def log_message(self, *args):
                pass

        return Handler


def _argv(kfp: KfpContractServer, registry: Registry, *extra: str) -> list[str]:
    return ["--host", kfp.url, "--context", "kind-kfp", "--pvc-name", "tfx-image-data",
            "--kfp-image", f"{registry.host}/{REPOSITORY}:1.0", *extra]


def _lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_a_ready_cluster_passes_every_check(kube, capsys):
    kube("persistentvolumeclaim", PVC)
    kube("secret", MINIO_SECRET)
    with KfpContractServer() as kfp, Registry({"1.0"}) as registry:
        kfp.pipelines["p-1"] = {"pipeline_id": "p-1", "display_name": "image-classifier"}
        assert cluster_check.main(_argv(kfp, registry)) == 0
        [listing] = [r for r in kfp.requests if r["path"] == "/apis/v2beta1/pipelines"]
    lines = _lines(capsys)
    assert len(lines) == 4 and all(line.startswith("ok") for line in lines), lines
    assert "volume tfx-image-data in kubeflow: ReadWriteMany, Bound" in lines[0]
    assert "secret mlpipeline-minio-artifact" in lines[1] and "minio://mlpipeline" in lines[1]
    assert DIGEST in lines[2] and "uploaded (id p-1)" in lines[3]
    predicates = json.loads(listing["query"]["filter"][0])["predicates"]
    assert predicates == [{"operation": "EQUALS", "key": "display_name",
                           "stringValue": "image-classifier"}]
    [head] = [r for r in registry.requests if r[0] == "HEAD"]
    assert head[1] == f"/v2/{REPOSITORY}/manifests/1.0"
    assert "application/vnd.oci.image.index.v1+json" in head[2]["Accept"]
    assert all(call[:4] == ["--context", "kind-kfp", "--namespace", "kubeflow"]
               for call in kube.calls())


def test_each_missing_piece_is_one_failed_line(kube, capsys):
    kube("persistentvolumeclaim", dict(PVC, spec=dict(PVC["spec"], accessModes=["ReadWriteOnce"])))
    with KfpContractServer(honour_filters=False) as kfp, Registry({"0.9"}) as registry:
        for n in range(150):  # a server ignoring the filter: the check pages to the end
            kfp.pipelines[f"p-{n}"] = {"pipeline_id": f"p-{n}", "display_name": f"other-{n}"}
        assert cluster_check.main(_argv(kfp, registry, "--namespace", "team-a")) == 1
        pages = [r for r in kfp.requests if r["path"] == "/apis/v2beta1/pipelines"]
    lines = _lines(capsys)
    assert len(lines) == 4 and all(line.startswith("FAIL") for line in lines), lines
    assert "in team-a: ReadWriteOnce, not ReadWriteMany" in lines[0]
    assert "secret mlpipeline-minio-artifact not found in team-a" in lines[1]
    assert "no such tag" in lines[2] and "not uploaded" in lines[3]
    assert len(pages) == 2


def test_an_s3_root_needs_the_launcher_config_and_its_secret(kube, capsys):
    kube("persistentvolumeclaim", PVC)
    kube("configmap", S3_LAUNCHER)
    with KfpContractServer() as kfp, Registry({"1.0"}) as registry:
        assert cluster_check.main(_argv(kfp, registry)) == 1
        assert "secret aws-s3-creds not found" in _lines(capsys)[1]
        kube("secret", S3_SECRET)
        cluster_check.main(_argv(kfp, registry))
        line = _lines(capsys)[1]
        assert line.startswith("ok") and "s3://ml-artifacts/v2/artifacts" in line
        cluster_check.main(_argv(kfp, registry, "--pipeline-root", "gs://bucket/root"))
        assert "has no providers.gs.default.credentials" in _lines(capsys)[1]


def test_a_private_registry_is_asked_with_a_token(kube, capsys, monkeypatch):
    kube("persistentvolumeclaim", PVC)
    kube("secret", MINIO_SECRET)
    monkeypatch.setenv("REGISTRY_USERNAME", "ci")
    monkeypatch.setenv("REGISTRY_PASSWORD", "pw")
    with KfpContractServer() as kfp, Registry({"1.0"}, ("ci", "pw")) as registry:
        cluster_check.main(_argv(kfp, registry))
        assert _lines(capsys)[2].startswith("ok")
        [token] = [r for r in registry.requests if r[0] == "GET"]
        assert "scope=repository%3Aml%2Ftfx-image-pipeline%3Apull" in token[1]
        monkeypatch.setenv("REGISTRY_PASSWORD", "wrong")
        cluster_check.main(_argv(kfp, registry))
        line = _lines(capsys)[2]
        assert line.startswith("FAIL") and "unauthorized" in line


def test_no_kubectl_and_no_api_fail_their_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    with Registry({"1.0"}) as registry:
        argv = ["--host", "http://127.0.0.1:9", "--pvc-name", "tfx-image-data",
                "--kfp-image", f"{registry.host}/{REPOSITORY}:1.0"]
        assert cluster_check.main(argv) == 1
    lines = _lines(capsys)
    assert "kubectl is not on PATH" in lines[0] and "kubectl is not on PATH" in lines[1]
    assert lines[2].startswith("ok") and "unreachable" in lines[3]


@pytest.mark.parametrize("argv, message", [
    (["--pvc-name", "v", "--kfp-image", "r.example.com/a:1"], "--host"),
    (["--host", "http://k", "--kfp-image", "r.example.com/a:1"], "--pvc-name"),
    (["--host", "http://k", "--pvc-name", "v"], "tfx-image-pipeline:latest"),
    (["--host", "http://k", "--pvc-name", "v", "--kfp-image", "r.example.com/a:1",
      "--no-such-option", "1"], "--no-such-option"),
])
def test_usage_errors_exit_2_in_one_line(argv, message, monkeypatch, capsys):
    monkeypatch.delenv("KFP_HOST", raising=False)
    with pytest.raises(SystemExit) as exit_:
        cluster_check.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_the_command_imports_no_training_stack():
    """It runs before the first deployment, on any operator's machine: seconds, not TF's."""
    import subprocess

    from tests.conftest import ROOT
    from tests.helpers import HEAVY, PROBE
    done = subprocess.run([sys.executable, "-c", PROBE.format(
        module="ops.cluster_check", args=["--help"], heavy=HEAVY)],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-300:]


def test_a_kubectl_that_hangs_is_a_failed_line(tmp_path, monkeypatch, capsys):
    script = tmp_path / "kubectl"
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(30)\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(cluster_check, "TIMEOUT", 1)
    kube = cluster_check.Kube("", "kubeflow")
    passed, line = cluster_check._cluster_line(cluster_check.check_volume, kube, "v")
    assert not passed and line == "volume: kubectl: no answer in 1 s"
