"""Scheduled scaling for known peaks (kfp/serving/gateway.yaml): the CronJobs patch the HPAs
that exist, within their bounds, with a ServiceAccount allowed to do exactly that. (Every
object is also validated against the Kubernetes schemas by test_serving_manifests.)"""
from __future__ import annotations

import json

from tests.helpers import OBJECTS, named as _named


def _patches(cronjob: str) -> dict[str, int]:
    """HPA name -> the minReplicas a CronJob sets."""
    pod = _named("CronJob", cronjob)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    patches = {}
    for container in pod["containers"]:
        verb, kind, name, merge, patch = container["args"]
        assert (verb, kind, merge) == ("patch", "hpa", "--type=merge")
        patches[name] = json.loads(patch.removeprefix("-p="))["spec"]["minReplicas"]
    return patches


def test_the_peak_raises_each_hpa_minimum_and_the_evening_restores_it():
    up, down = _patches("peak-scale-up"), _patches("peak-scale-down")
    assert set(up) == set(down) == {"gateway", "tf-serving"}
    for name in up:
        hpa = _named("HorizontalPodAutoscaler", name)["spec"]
        assert hpa["minReplicas"] < up[name] <= hpa["maxReplicas"]
        assert down[name] == hpa["minReplicas"]


def test_the_scaler_may_patch_those_hpas_and_nothing_else():
    role = _named("Role", "peak-scaler")
    (rule,) = role["rules"]
    assert rule["resources"] == ["horizontalpodautoscalers"]
    assert set(rule["resourceNames"]) == set(_patches("peak-scale-up"))
    assert set(rule["verbs"]) == {"get", "patch"}
    binding = _named("RoleBinding", "peak-scaler")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    for cronjob in ("peak-scale-up", "peak-scale-down"):
        pod = _named("CronJob", cronjob)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert {"kind": "ServiceAccount", "name": pod["serviceAccountName"]} in \
            binding["subjects"]
        assert ("ServiceAccount", pod["serviceAccountName"]) in {
            (o["kind"], o["metadata"]["name"]) for o in OBJECTS}
