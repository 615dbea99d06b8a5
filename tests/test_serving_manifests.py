"""The Kubernetes manifests in kfp/serving/: valid against the Kubernetes object schemas
(offline, kubernetes-validate), consistent with each other and with the code they run."""
from __future__ import annotations

import copy
import json
import os
import re
import shlex

import kubernetes_validate
import pytest
import yaml

from domain import registry
from domain.labels import MODELS_CONFIG, TF_SERVING_ROOT
from serving.__main__ import arguments
from serving.gateway import Metrics
from tests.helpers import OBJECTS, named as _named

HERE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "kfp", "serving")
KUBERNETES = "1.33"


def _containers(name: str) -> list[dict]:
    return _named("Deployment", name)["spec"]["template"]["spec"]["containers"]


def _container(name: str) -> dict:
    """The Deployment's container of its own name (else its first)."""
    containers = _containers(name)
    return next((c for c in containers if c["name"] == name), containers[0])


@pytest.mark.parametrize("manifest", OBJECTS, ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_every_object_is_valid_against_the_kubernetes_schema(manifest):
    kubernetes_validate.validate(manifest, KUBERNETES, strict=True)


def test_a_broken_object_is_caught():
    broken = copy.deepcopy(_named("Deployment", "gateway"))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_the_set_is_complete_and_its_references_resolve():
    kinds = {(o["kind"], o["metadata"]["name"]) for o in OBJECTS}
    for name in ("tf-serving", "gateway"):
        assert {("Deployment", name), ("Service", name), ("HorizontalPodAutoscaler", name)} <= kinds
        deployment, service = _named("Deployment", name), _named("Service", name)
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        ports = {p["name"] for c in _containers(name) for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
        container = _container(name)
        assert container["resources"]["requests"] and container["readinessProbe"]
        assert container["livenessProbe"]
        target = _named("HorizontalPodAutoscaler", name)["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", name)
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        for volume in volumes:
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) \
                    in kinds
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in kinds


def test_tf_serving_reads_the_models_config_that_ops_labels_writes():
    container = _container("tf-serving")
    assert container["image"].startswith("tensorflow/serving:")
    flags = dict(a.lstrip("-").split("=", 1) for a in container["args"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert mount["mountPath"] == TF_SERVING_ROOT and mount["readOnly"]
    assert flags["model_config_file"] == (f"{TF_SERVING_ROOT}/image_classifier/"
                                          f"{MODELS_CONFIG}")
    monitoring = _named("ConfigMap", "tf-serving-monitoring")["data"]["monitoring.config"]
    path = re.search(r'path: "([^"]+)"', monitoring).group(1)
    scrape = yaml.safe_load(_named("ConfigMap", "prometheus-tfx-image-scrape")["data"][
        "prometheus.yml"])
    jobs = {j["job_name"]: j for j in scrape["scrape_configs"]}
    assert jobs["tf-serving"]["metrics_path"] == path
    assert jobs["gateway"]["metrics_path"] == "/metrics"


def test_the_gateway_command_parses_and_probes_its_own_routes():
    container = _container("gateway")
    args = arguments().parse_args(container["args"])
    assert args.backend == "http://tf-serving:8501" and not args.no_auth
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[args.serving_dir]["readOnly"] and not mounts[args.feedback_dir].get("readOnly")
    assert os.path.dirname(args.jwt_key_file) in mounts
    assert {container["readinessProbe"]["httpGet"]["path"],
            container["livenessProbe"]["httpGet"]["path"]} == {"/readyz", "/healthz"}
    assert shlex.join(container["command"]) == "python -m serving"


def test_the_dashboard_queries_only_metrics_that_exist():
    with open(os.path.join(HERE, "dashboards", "gateway.json")) as f:
        dashboard = json.load(f)
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum",
                                                                       "_count")}
    exported = {family.name + suffix for family in Metrics().registry.collect()
                for suffix in suffixes[family.type]}
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["targets"] and panel["gridPos"]["w"] > 0
        for target in panel["targets"]:
            queried |= set(re.findall(r"\b(gateway_[a-z_]+)", target["expr"]))
    assert queried and queried <= exported, queried - exported
    for histogram in ("gateway_request_seconds_bucket", "gateway_model_seconds_bucket"):
        assert histogram in queried


def test_the_gateway_faces_clients_only_through_its_edge_proxy():
    from serving.edge import EdgeLimits, render
    edge, gateway = (next(c for c in _containers("gateway") if c["name"] == name)
                     for name in ("edge", "gateway"))
    args = arguments().parse_args(gateway["args"])
    assert (args.host, args.trusted_proxy) == ("127.0.0.1", ["127.0.0.1/32"])
    conf = _named("ConfigMap", "gateway-edge")["data"]["nginx.conf"]
    listen = {p["name"]: p["containerPort"] for p in edge["ports"]}["http"]
    assert conf == render(EdgeLimits(listen=str(listen), upstream=f"127.0.0.1:{args.port}"))
    config_path = edge["command"][edge["command"].index("-c") + 1]
    mounts = {m["mountPath"]: m["name"] for m in edge["volumeMounts"]}
    assert mounts[os.path.dirname(config_path)] == "edge-config"
    service = _named("Service", "gateway")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}
