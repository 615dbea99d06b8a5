"""Is the cluster ready for the pipeline? One line per check, before the first run.

``python -m ops.cluster_check --host URL [--context K] [--namespace NS] [pipeline options]``
(the pipeline options of ``make compile``: ``--pvc-name``, ``--kfp-image``, ``--pipeline-root``,
``--pipeline-name``) checks, in the namespace the pipeline's pods run in (``kubeflow`` for
standalone KFP, the profile's namespace on multi-user Kubeflow):

- the volume ``--pvc-name`` exists and is ReadWriteMany (``kubectl get pvc -o json``);
- the object store's credentials for the pipeline root (``--pipeline-root``, else the
  ``kfp-launcher`` ConfigMap's ``defaultPipelineRoot``, else ``minio://mlpipeline/v2/artifacts``):
  the secret ``mlpipeline-minio-artifact`` for ``minio://``; for ``s3://`` and ``gs://`` the
  ``kfp-launcher`` ConfigMap's provider and the secret it names (or ``fromEnv``);
- the image ``--kfp-image`` exists in its registry (registry v2 API: HEAD of the tag's
  manifest; ``$REGISTRY_USERNAME``/``$REGISTRY_PASSWORD`` for a private one; plain HTTP for
  localhost, as Docker does, or with ``--plain-http``);
- the pipeline ``--pipeline-name`` is uploaded (KFP API ``/apis/v2beta1/pipelines``, with the
  bearer token of ``$KFP_TOKEN`` if set).

Exit code 0 when every check passes, 1 when one fails, 2 for a usage error.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import yaml

from ops.schedule import name_filter
from pipeline.config import PipelineConfig

DEFAULT_ROOT = "minio://mlpipeline/v2/artifacts"  # the backend's default (v2/config/env.go)
MINIO_SECRET = "mlpipeline-minio-artifact"
LAUNCHER_CONFIG = "kfp-launcher"
MANIFESTS = ", ".join([  # what `docker push` writes: an index, a list or one manifest
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json"])
TIMEOUT = 20


class Kube:
    """``kubectl get -o json`` in one context and namespace."""

    def __init__(self, context: str, namespace: str):
        self.context, self.namespace = context, namespace

    def get(self, kind: str, name: str) -> dict | None:
        """The object, or None when it does not exist; RuntimeError for any other failure."""
        command = ["kubectl", *(["--context", self.context] if self.context else []),
                   "--namespace", self.namespace, "get", kind, name, "-o", "json"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
        except FileNotFoundError:
            raise RuntimeError("kubectl is not on PATH") from None
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"no answer in {TIMEOUT} s") from None
        if done.returncode == 0:
            return json.loads(done.stdout)
        if "NotFound" in done.stderr:
            return None
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip()
                           else f"kubectl exited with {done.returncode}")


def check_volume(kube: Kube, name: str) -> tuple[bool, str]:
    claim = kube.get("persistentvolumeclaim", name)
    where = f"volume {name} in {kube.namespace}"
    if claim is None:
        return False, f"{where}: not found (kubectl apply -f kfp/serving/storage.yaml)"
    modes = claim["spec"].get("accessModes", [])
    phase = claim.get("status", {}).get("phase", "?")
    if "ReadWriteMany" not in modes:
        return False, f"{where}: {', '.join(modes)}, not ReadWriteMany (an RWX storage class)"
    if phase == "Lost":
        return False, f"{where}: Lost (its PersistentVolume is gone)"
    return True, f"{where}: ReadWriteMany, {phase}"


def _secret(kube: Kube, name: str, keys: list[str], what: str) -> tuple[bool, str]:
    secret = kube.get("secret", name)
    if secret is None:
        return False, f"object store ({what}): secret {name} not found in {kube.namespace}"
    missing = [k for k in keys if k not in secret.get("data", {})]
    if missing:
        return False, f"object store ({what}): secret {name} has no {', '.join(missing)}"
    return True, f"object store ({what}): secret {name} in {kube.namespace}"


def check_object_store(kube: Kube, root: str) -> tuple[bool, str]:
    """The credentials the launcher uses for ``root`` (backend/src/v2/config)."""
    launcher = kube.get("configmap", LAUNCHER_CONFIG) or {}
    root = root or launcher.get("data", {}).get("defaultPipelineRoot") or DEFAULT_ROOT
    scheme = root.partition("://")[0]
    what = f"pipeline root {root}"
    if scheme == "minio":
        return _secret(kube, MINIO_SECRET, ["accesskey", "secretkey"], what)
    if scheme not in ("s3", "gs"):
        return False, f"object store ({what}): not minio://, s3:// or gs://"
    providers = yaml.safe_load(launcher.get("data", {}).get("providers") or "{}") or {}
    default = (providers.get(scheme) or {}).get("default") or {}
    credentials = default.get("credentials")
    if not credentials:
        return False, (f"object store ({what}): ConfigMap {LAUNCHER_CONFIG} in {kube.namespace} "
                       f"has no providers.{scheme}.default.credentials (kfp/README.md)")
    if credentials.get("fromEnv"):
        return True, f"object store ({what}): {LAUNCHER_CONFIG} takes credentials from the pod"
    ref = credentials.get("secretRef") or {}
    keys = [ref[k] for k in ("accessKeyKey", "secretKeyKey", "tokenKey") if ref.get(k)]
    return _secret(kube, ref.get("secretName", "?"), keys, what)


def image_reference(image: str) -> tuple[str, str, str]:
    """``registry/path:tag`` (or ``@sha256:...``) -> (registry, path, tag or digest)."""
    match = re.fullmatch(r"([^/]+\.[^/]+|[^/]+:\d+|localhost)/([^:@]+)[:@](.+)", image)
    if not match:
        raise ValueError(f"--kfp-image {image!r}: expected <registry>/<name>:<tag>, the image "
                         "the cluster pulls (make image IMAGE=...)")
    return match.group(1), match.group(2), match.group(3)


def _bearer(challenge: str, path: str) -> str | None:
    """A token from the registry's auth service (Docker's token flow), anonymous or with
    ``$REGISTRY_USERNAME``/``$REGISTRY_PASSWORD``; None when it gives none."""
    fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    if not challenge.lower().startswith("bearer") or "realm" not in fields:
        return None
    query = {"scope": fields.get("scope", f"repository:{path}:pull")}
    if "service" in fields:
        query["service"] = fields["service"]
    request = urllib.request.Request(f"{fields['realm']}?{urllib.parse.urlencode(query)}")
    user, password = os.environ.get("REGISTRY_USERNAME"), os.environ.get("REGISTRY_PASSWORD")
    if user and password:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {basic}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            body = json.load(answer)
    except (OSError, ValueError):  # refused credentials (HTTPError), unreachable, not JSON
        return None
    return body.get("token") or body.get("access_token")


def check_image(image: str, plain_http: bool) -> tuple[bool, str]:
    registry, path, tag = image_reference(image)
    local = registry.split(":")[0] in ("localhost", "127.0.0.1")
    url = f"{'http' if plain_http or local else 'https'}://{registry}/v2/{path}/manifests/{tag}"
    headers = {"Accept": MANIFESTS}
    for _ in range(2):
        request = urllib.request.Request(url, method="HEAD", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
                digest = answer.headers.get("Docker-Content-Digest", "")
                return True, f"image {image}: in the registry {digest}".rstrip()
        except urllib.error.HTTPError as err:
            if err.code == 401 and "Authorization" not in headers:
                token = _bearer(err.headers.get("WWW-Authenticate", ""), path)
                if token:
                    headers["Authorization"] = f"Bearer {token}"
                    continue
            reason = {404: "no such tag (make image, docker push)",
                      401: "unauthorized ($REGISTRY_USERNAME, $REGISTRY_PASSWORD)"}
            return False, f"image {image}: {reason.get(err.code, f'HTTP {err.code}')}"
        except (urllib.error.URLError, OSError) as err:
            return False, f"image {image}: registry unreachable ({getattr(err, 'reason', err)})"
    return False, f"image {image}: unauthorized"


def check_pipeline(host: str, name: str) -> tuple[bool, str]:
    """Pages through ``GET /apis/v2beta1/pipelines`` filtered by ``name``."""
    headers = ({"Authorization": f"Bearer {os.environ['KFP_TOKEN']}"}
               if os.environ.get("KFP_TOKEN") else {})
    token = ""
    while True:
        query = urllib.parse.urlencode({"filter": name_filter(name), "page_size": 100,
                                        "page_token": token})
        request = urllib.request.Request(f"{host.rstrip('/')}/apis/v2beta1/pipelines?{query}",
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
                page = json.load(answer)
        except urllib.error.HTTPError as err:
            return False, f"pipeline {name}: the KFP API at {host} answered HTTP {err.code}"
        except (urllib.error.URLError, OSError) as err:
            return False, f"pipeline {name}: KFP API {host} unreachable " \
                          f"({getattr(err, 'reason', err)})"
        found = [p for p in page.get("pipelines", []) if p.get("display_name") == name]
        if found:
            return True, f"pipeline {name}: uploaded (id {found[0].get('pipeline_id')})"
        token = page.get("next_page_token", "")
        if not token:
            return False, f"pipeline {name}: not uploaded (python -m ops.schedule, or the UI)"


def _cluster_line(check, *args) -> tuple[bool, str]:
    """A check that asks kubectl: its failure to answer is a failed check, said in one line."""
    try:
        return check(*args)
    except RuntimeError as err:
        return False, f"{check.__name__.removeprefix('check_').replace('_', ' ')}: kubectl: {err}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.cluster_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("KFP_HOST", ""),
                        help="KFP API endpoint (default: $KFP_HOST)")
    parser.add_argument("--context", default="", help="kube context (default: the current)")
    parser.add_argument("--namespace", default="kubeflow",
                        help="where the pipeline's pods run (multi-user: the profile's)")
    parser.add_argument("--plain-http", action="store_true", help="the registry speaks HTTP")
    args, rest = parser.parse_known_args(argv)
    config = PipelineConfig.from_args(rest, prog="python -m ops.cluster_check")
    if not args.host:
        parser.error("--host (or KFP_HOST) is required: the KFP API endpoint")
    if not config.pvc_name:
        parser.error("--pvc-name is required: the volume the pipeline mounts")
    try:
        image_reference(config.kfp_image)
    except ValueError as err:
        parser.error(str(err))
    kube = Kube(args.context, args.namespace)
    root = config.pipeline_root if "://" in config.pipeline_root else ""
    results = [_cluster_line(check_volume, kube, config.pvc_name),
               _cluster_line(check_object_store, kube, root),
               check_image(config.kfp_image, args.plain_http),
               check_pipeline(args.host, config.pipeline_name)]
    for passed, line in results:
        print(f"{'ok  ' if passed else 'FAIL'}  {line}")
    return 0 if all(passed for passed, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
