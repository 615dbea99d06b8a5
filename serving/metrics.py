"""The gateway's Prometheus metrics, in a registry of their own (served at ``/metrics``)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serving.routing import Router


class Metrics:
    """The gateway's Prometheus metrics, in their own registry."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("gateway_requests_total", "Requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("gateway_request_seconds", "Request latency by route",
                                 ["route"], registry=self.registry)
        self.rejected = Counter("gateway_rejected_total", "Rejected requests by reason",
                                ["reason"], registry=self.registry)
        self.predictions = Counter("gateway_predictions_total", "Images classified, by the "
                                   "label and version that answered", ["label", "version"],
                                   registry=self.registry)
        self.model_latency = Histogram("gateway_model_seconds", "Backend latency by label",
                                       ["label"], registry=self.registry)
        self.feedback = Counter("gateway_feedback_total", "True classes received, by label "
                                "and whether the answer was right", ["label", "correct"],
                                registry=self.registry)
        self.version = Gauge("gateway_model_version", "The version each label routes to",
                             ["label"], registry=self.registry)
        self.canary_weight = Gauge("gateway_canary_weight", "The canary's share of traffic",
                                   registry=self.registry)

    def labels(self, router: Router) -> None:
        """Sets the label gauges to what ``router`` routes to now."""
        self.version.clear()
        for label, version in router.versions().items():
            self.version.labels(label).set(version)
        labels = router.labels()
        self.canary_weight.set(labels.canary_weight if labels else 0.0)

    def exposition(self, router: Router) -> bytes:
        """The metrics in Prometheus' text format, the label gauges as ``router`` routes now."""
        self.labels(router)
        return generate_latest(self.registry)
