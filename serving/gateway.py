"""The prediction gateway: the protections of a public image endpoint in front of a model.

``create_app`` composes small pieces, each its own module: the edge proxy's connection level
(``serving.edge``) and the server's limits (``serving.server``) before any request reaches the
app, then per request, in order, the ``Guard`` (``serving.guard``): the per-address token bucket
(``serving.rate``: every request, authenticated or not, ``/readyz`` and ``/metrics`` too;
429), the path (404), the JWT (``serving.auth``: 401), the per-subject bucket (429), the
body's size, deadline and concurrency (``serving.limits``: 413/408/503); then the handler:
``Predictions`` (``serving.predictions``) checks the images in a worker thread
(``serving.images`` over ``domain.image_header``: type and magic 415, a bounded header walk
422, pixels against a limit derived from the model's input size 422, instance and pixel
budgets 413), and only then does the ``Router``'s label and version's backend classify,
through the ``Batcher``. ``FeedbackIntake`` takes feedback, ``Control`` the health, readiness,
metrics, status, page and model card.

Nothing that depends on a request runs in the event loop: parsing (multipart, JSON, base64,
image headers), routing, readiness and model loads run in worker threads with a time budget
each (503 past it), and a background task (``serving.refresh``) refreshes the backend
(labelled versions loaded, TF Serving's status), so ``/healthz`` answers from the loop alone.
Every rejection is one JSON log line (reason, client, size, route) and a
``gateway_rejected_total{reason}`` count. Answers carry a request id for later feedback.
"""
from __future__ import annotations

import contextlib

from starlette.applications import Starlette
from starlette.routing import Route

from serving.backends import Batcher
from serving.config import GatewayConfig
from serving.control import Control
from serving.feedback import Answers
from serving.feedback_intake import FeedbackIntake
from serving.guard import Guard
from serving.images import PixelLimits
from serving.limits import WorkerPool
from serving.metrics import Metrics
from serving.predictions import Predictions
from serving.rate import TokenBuckets
from serving.refresh import BackendRefresh
from serving.routing import Router

MODEL = "/v1/models/{name}"


def create_app(config: GatewayConfig, router: Router, answers: Answers,
               metrics: Metrics | None = None, buckets: TokenBuckets | None = None) -> Starlette:
    """The gateway: ``router`` picks the label and version, its backend classifies, and
    ``answers`` keeps the answers that feedback may come for."""
    metrics = metrics or Metrics()
    checks = WorkerPool(4, "gateway-check", config.check_timeout)
    control_pool = WorkerPool(2, "gateway-control", config.control_timeout)
    refresh = BackendRefresh(router, config.refresh_interval)
    guard = Guard(config, metrics, buckets)
    batcher = Batcher(router.backend, config.max_batch, config.batch_window,
                      config.max_batch_pixels)
    predictions = Predictions(config, router, batcher, answers, metrics, checks,
                              PixelLimits(router.push_dir, config.max_pixels))
    feedback = FeedbackIntake(router, answers, metrics, checks, config.max_json_depth)
    control = Control(config.model_name, router, metrics, guard, control_pool)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette):
        refresh.start()
        try:
            yield
        finally:
            refresh.stop()
            checks.close()
            control_pool.close()

    return Starlette(routes=routes(guard, predictions, feedback, control), lifespan=lifespan)


def routes(guard: Guard, predictions: Predictions, feedback: FeedbackIntake,
           control: Control) -> list[Route]:
    """The gateway's URL table: the model's routes behind ``guard``, then the open ones."""
    table = [Route(MODEL, guard.endpoint(control.status, "status"), methods=["GET"]),
             Route(f"{MODEL}:feedback", guard.endpoint(feedback, "feedback"), methods=["POST"])]
    for target in ("", "/labels/{label}", "/versions/{version}"):
        table += [Route(f"{MODEL}{target}:classify",
                        guard.endpoint(predictions.classify, "classify"), methods=["POST"]),
                  Route(f"{MODEL}{target}:predict",
                        guard.endpoint(predictions.predict, "predict"), methods=["POST"])]
    return table + [
        Route("/", control.page), Route("/model-card", control.card),
        Route("/model-card/report/{label}", control.card),
        Route("/healthz", control.healthz), Route("/readyz", control.readyz),
        Route("/metrics", control.metrics_text)]
