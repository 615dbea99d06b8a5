"""The prediction gateway: the protections of a public image endpoint in front of a model.

``create_app`` composes small pieces, each its own module: the server's limits before any
request reaches the app (``serving.server``: header size and deadline, connection cap), then
per request, in order: the per-address token bucket (``serving.rate``: every request,
authenticated or not, ``/readyz`` and ``/metrics`` too; 429), the path (404), the JWT
(``serving.auth``: 401), the per-subject bucket (429), the body's size, deadline and
concurrency (``serving.limits``: 413/408/503), and the image checks in a worker thread
(``domain.image_header``: type and magic 415, a bounded header walk 422, pixels against a
limit derived from the model's input size 422, instance and pixel budgets 413). Only then does
the ``Router``'s label and version's backend classify, through the ``Batcher``.

Nothing that depends on a request runs in the event loop: parsing (multipart, JSON, base64,
image headers), routing, readiness and model loads run in worker threads with a time budget
each (503 past it), and a background task refreshes the backend (labelled versions loaded, TF
Serving's status), so ``/healthz`` answers from the loop alone. Every rejection is one JSON log
line (reason, client, size, route) and a ``gateway_rejected_total{reason}`` count. Answers
carry a request id for later feedback.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from domain.image_header import MAGIC, ImageRefused, model_pixel_limit, read_header
from serving.auth import TokenPolicy
from serving.backends import BadImage, Batcher, Unavailable
from serving.feedback import FEEDBACK_SCOPE, Answers, BadFeedback, UnknownRequest
from serving.limits import Bodies, Rejected, json_object, offload, version_number
from serving.model_card import model_card, report_of
from serving.rate import Peers, TokenBuckets
from serving.routing import NoRoute, Router

LOG = logging.getLogger("gateway")
PAGE = pathlib.Path(__file__).with_name("page.html")  # the try-it page, no build step
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; "
                "style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'",
                "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}
# The model card and run reports: no scripts, images inline.
CARD_HEADERS = {"Content-Security-Policy": "default-src 'none'; img-src data:; "
                "style-src 'unsafe-inline'", "X-Content-Type-Options": "nosniff",
                "X-Frame-Options": "DENY"}
PREDICT_BODY = '{"instances": [{"b64": ...}]}'
# HTTP status of each of the header parser's refusals.
IMAGE_STATUS = {"not_an_image": 415, "bad_header": 422, "too_many_pixels": 422}


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    """The gateway's limits and keys (times in seconds)."""

    model_name: str = "image_classifier"
    max_bytes: int = 10 * 2**20
    max_pixels: int = 0  # per image; 0: derived from the served version's input size
    max_batch_pixels: int = 2**24  # decoded pixels per request and per backend call
    max_instances: int = 32  # images per :predict request
    auth: bool = True
    jwt_key: str = ""  # HS256 secret (>= 32 bytes), or an RS256 public key (PEM)
    issuer: str = ""  # required ``iss`` when set
    audience: str = ""  # required ``aud`` when set
    max_token_lifetime: float = 86400.0  # an ``exp`` further ahead is refused (0: any)
    rate_per_second: float = 10.0  # per token subject
    burst: int = 20
    address_rate: float = 100.0  # per client address, every request
    address_burst: int = 200
    trusted_proxies: tuple[str, ...] = ()  # addresses/CIDRs whose X-Forwarded-For is believed
    top_k: int = 3
    max_batch: int = 32  # images per backend call, from concurrent requests
    batch_window: float = 0.002  # seconds a request waits for others to batch with
    max_bodies: int = 32  # requests past authentication at once (503 beyond)
    body_timeout: float = 10.0  # to receive a whole body (408)
    check_timeout: float = 5.0  # budget of routing, parsing and checking a request's images
    control_timeout: float = 2.0  # budget of readiness, status and metrics
    model_timeout: float = 30.0  # budget of a backend call, a model load included
    refresh_interval: float = 2.0  # between background backend refreshes
    max_json_depth: int = 8


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


def check_images(images: list[bytes], content_types: list[str], max_pixels: int,
                 max_total: int) -> int:
    """The decoded pixels of ``images``, each an image of its content type (``""``: any
    allowed one) within ``max_pixels``, together within ``max_total``; ``Rejected`` naming the
    instance otherwise."""
    total = 0
    for index, (image, content_type) in enumerate(zip(images, content_types)):
        where = f"instance {index}: " if len(images) > 1 else ""
        try:
            total += read_header(image, max_pixels, content_type).pixels
        except ImageRefused as refused:
            raise Rejected(IMAGE_STATUS[refused.reason], "magic" if refused.reason ==
                           "not_an_image" else refused.reason, f"{where}{refused}") from None
    if total > max_total:
        raise Rejected(413, "too_many_pixels", f"{total:,} decoded pixels in one request, more "
                       f"than {max_total:,}")
    return total


def predict_instances(body: bytes, max_instances: int, max_depth: int) -> list[bytes]:
    """The images of a ``:predict`` body; 413 for more than ``max_instances`` (counted before
    any is decoded), 400 for anything but ``{"instances": [{"b64": ...}, ...]}``."""
    value = json_object(body, PREDICT_BODY, max_depth, max_containers=max_instances + 2)
    instances = value.get("instances")
    if not isinstance(instances, list) or not instances:
        raise Rejected(400, "bad_request", f"expected {PREDICT_BODY}: no instances")
    if len(instances) > max_instances:
        raise Rejected(413, "too_many_instances", f"{len(instances)} instances, more than "
                       f"{max_instances}")
    try:
        return [base64.b64decode(item["b64"], validate=True) for item in instances]
    except (binascii.Error, ValueError, KeyError, TypeError) as err:
        raise Rejected(400, "bad_request", f"expected {PREDICT_BODY}: {err!r}") from None


def uploaded_image(headers: Headers, body: bytes) -> tuple[bytes, str]:
    """``(image bytes, content type)`` of a raw body, or of the one file in a multipart form
    (parsed by its own event loop: this runs in a worker thread)."""
    content_type = headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return body, content_type

    async def parse() -> tuple[bytes, str]:
        async def stream():
            yield body

        form = await MultiPartParser(headers, stream(), max_files=1, max_fields=10).parse()
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise Rejected(400, "bad_multipart", "the multipart body has no file part")
        return await files[0].read(), files[0].content_type or ""

    try:
        return asyncio.run(parse())
    except (MultiPartException, ValueError) as err:
        raise Rejected(400, "bad_multipart", f"unreadable multipart body: {err}") from None


def refusal(rejected: Rejected) -> JSONResponse:
    """The JSON answer to a refused request."""
    return JSONResponse({"error": str(rejected), "reason": rejected.reason}, rejected.status,
                        headers=rejected.headers)


def allowed_type(content_type: str) -> str:
    """The media type of a ``Content-Type`` header; 415 unless it is an allowed image type."""
    kind = content_type.split(";")[0].strip().lower()
    if kind not in MAGIC:
        raise Rejected(415, "content_type", f"Content-Type {kind[:40] or 'missing'} is not "
                       f"one of {', '.join(MAGIC)}")
    return kind


class Guard:
    """Everything a request passes before its handler, in order: the per-address bucket, the
    model name in the path, the token, the per-subject bucket and the body. Counts and logs
    every refusal; a handler's own failure is a 500, never a crash."""

    def __init__(self, config: GatewayConfig, metrics: Metrics,
                 buckets: TokenBuckets | None = None):
        self.config, self.metrics = config, metrics
        self.peers = Peers(config.trusted_proxies)
        self.by_address = TokenBuckets(config.address_rate, config.address_burst)
        self.by_subject = buckets or TokenBuckets(config.rate_per_second, config.burst)
        self.policy = TokenPolicy(config.jwt_key, config.issuer, config.audience,
                                  config.max_token_lifetime) if config.auth else None
        self.bodies: Bodies | None = None  # made in the event loop (its semaphore)

    @staticmethod
    def _take(buckets: TokenBuckets, client: str) -> None:
        wait = buckets.take(client)
        if wait:
            raise Rejected(429, "rate_limited", "too many requests",
                           {"Retry-After": str(max(1, round(wait + 0.5)))})

    def address_limit(self, request: Request) -> None:
        """429 when the request's client address is over its rate."""
        self._take(self.by_address, f"ip:{self.peers.client(request)}")

    async def __call__(self, request: Request, route: str, handle) -> Response:
        start, client, size = time.perf_counter(), self.peers.client(request), 0
        request.state.claims = None
        self.bodies = self.bodies or Bodies(self.config.max_bodies, self.config.max_bytes,
                                            self.config.body_timeout)
        try:
            self.address_limit(request)
            if request.path_params["name"] != self.config.model_name:
                raise Rejected(404, "unknown_model",
                               f"no model {request.path_params['name'][:64]!r}")
            if self.policy:
                claims = request.state.claims = self.policy.claims(
                    request.headers.get("authorization", ""))
                client = f"sub:{claims['sub'][:64]}"
                self._take(self.by_subject, client)
            request.state.client = client
            async with self.bodies:
                body = await self.bodies.read(request)
                size = len(body)
                response = JSONResponse(await handle(request, body))
        except Rejected as rejected:
            self.metrics.rejected.labels(rejected.reason).inc()
            LOG.warning(json.dumps({"event": "rejected", "reason": rejected.reason,
                                    "client": client, "size": size, "route": route,
                                    "status": rejected.status}))
            response = refusal(rejected)
        except Exception:  # noqa: BLE001 - one request's failure never takes the gateway down
            LOG.exception("unexpected failure on %s", route)
            response = JSONResponse({"error": "internal error", "reason": "internal"}, 500)
        self.metrics.requests.labels(route, str(response.status_code)).inc()
        self.metrics.latency.labels(route).observe(time.perf_counter() - start)
        return response


def create_app(config: GatewayConfig, router: Router, answers: Answers,
               metrics: Metrics | None = None, buckets: TokenBuckets | None = None) -> Starlette:
    """The gateway: ``router`` picks the label and version, its backend classifies, and
    ``answers`` keeps the answers that feedback may come for."""
    metrics = metrics or Metrics()
    guard = Guard(config, metrics, buckets)
    batcher = Batcher(router.backend, config.max_batch, config.batch_window,
                      config.max_batch_pixels)
    checks = concurrent.futures.ThreadPoolExecutor(4, "gateway-check")
    control = concurrent.futures.ThreadPoolExecutor(2, "gateway-control")
    refresher = concurrent.futures.ThreadPoolExecutor(1, "gateway-refresh")
    limits: dict[int, int] = {}
    page = PAGE.read_text(encoding="utf-8").replace("__MODEL_NAME__", config.model_name)

    def route_of(label: str, version_text: str) -> tuple[str, int, int]:
        """``(label, version, pixel limit)`` for a request (runs in a worker thread)."""
        version = version_number(version_text) if version_text else 0
        try:
            label, version = router.choose(label, version)
        except NoRoute as err:
            raise Rejected(err.status, "no_route", str(err)[:200]) from None
        if version not in limits:
            limits[version] = config.max_pixels or model_pixel_limit(
                os.path.join(router.push_dir, str(version)))
        return label, version, limits[version]

    async def checked(request: Request, parse, *args) -> tuple[str, int, list[bytes], int]:
        """``(label, version, images, decoded pixels)``: the request's route, then
        ``parse(*args, pixel limit)`` -> ``(images, pixels)``, in one worker-thread hop."""
        label, version_text = (request.path_params.get("label", ""),
                               request.path_params.get("version", ""))

        def work():
            route = route_of(label, version_text)
            return (*route[:2], *parse(*args, route[2]))
        return await offload(checks, config.check_timeout, work)

    async def answer(label: str, version: int, images: list[bytes], pixels: int) -> list[dict]:
        start = time.perf_counter()
        try:
            probabilities, names = await asyncio.wait_for(
                batcher.classify(images, version, pixels), config.model_timeout)
        except TimeoutError:
            raise Rejected(503, "timeout", f"version {version} did not answer within "
                           f"{config.model_timeout:g} s", {"Retry-After": "5"}) from None
        except Unavailable as err:
            raise Rejected(503, "unavailable", str(err), {"Retry-After": "5"}) from None
        except BadImage as err:
            raise Rejected(422, "undecodable", str(err)) from None
        metrics.model_latency.labels(label).observe(time.perf_counter() - start)
        metrics.predictions.labels(label, str(version)).inc(len(images))
        results = []
        for row in probabilities:
            top = sorted(range(len(row)), key=lambda i: -row[i])[:config.top_k]
            request_id = answers.issue(label, version, names[top[0]], names)
            results.append({"request_id": request_id, "model_version": version,
                            "label": label, "top": [{"class": names[i],
                                                     "probability": float(row[i])}
                                                    for i in top]})
        return results

    def image_checked(headers: Headers, body: bytes, limit: int) -> tuple[list[bytes], int]:
        image, content_type = uploaded_image(headers, body)
        return [image], check_images([image], [allowed_type(content_type)], limit,
                                     config.max_batch_pixels)

    async def classify(request: Request, body: bytes) -> dict:
        label, version, images, pixels = await checked(request, image_checked,
                                                       request.headers, body)
        return (await answer(label, version, images, pixels))[0]

    def predict_checked(body: bytes, limit: int) -> tuple[list[bytes], int]:
        images = predict_instances(body, config.max_instances, config.max_json_depth)
        return images, check_images(images, [""] * len(images), limit, config.max_batch_pixels)

    async def predict(request: Request, body: bytes) -> dict:
        label, version, images, pixels = await checked(request, predict_checked, body)
        return {"predictions": await answer(label, version, images, pixels)}

    def record_feedback(body: bytes, claims: dict | None, client: str) -> dict:
        value = json_object(body, '{"request_id": ..., "class": ...}', config.max_json_depth)
        if not isinstance(value.get("request_id"), str) or not isinstance(value.get("class"),
                                                                          str):
            raise Rejected(400, "bad_request", 'expected {"request_id": "...", "class": "..."}')
        if claims is not None and FEEDBACK_SCOPE not in str(claims.get("scope", "")).split():
            raise Rejected(403, "no_feedback_scope",
                           f"feedback needs a token with the {FEEDBACK_SCOPE!r} scope")
        try:
            return answers.record(value["request_id"], value["class"], client,
                                  router.class_names)
        except UnknownRequest as err:
            raise Rejected(404, "unknown_request", err.args[0][:300]) from None
        except BadFeedback as err:
            raise Rejected(422, "unknown_class", str(err)[:300]) from None

    async def feedback(request: Request, body: bytes) -> dict:
        entry = await offload(checks, config.check_timeout, record_feedback, body,
                              request.state.claims, request.state.client)
        metrics.feedback.labels(entry["label"], str(entry["correct"]).lower()).inc()
        return {"request_id": entry["request_id"], "correct": entry["correct"]}

    def status_now() -> dict:
        labels = router.labels()
        return {"model": config.model_name, "labels": router.versions(),
                "canary_weight": labels.canary_weight if labels else 0.0}

    async def status(request: Request, body: bytes) -> dict:
        return await offload(control, config.control_timeout, status_now)

    def route(handle, name):
        async def endpoint(request: Request) -> Response:
            return await guard(request, name, handle)
        return endpoint

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def readiness() -> tuple[bool, int]:
        stable = router.versions().get("stable", 0)
        return bool(stable) and router.backend.ready(stable), stable

    async def readyz(request: Request) -> Response:
        try:
            guard.address_limit(request)
        except Rejected as rejected:
            return refusal(rejected)
        try:
            ready, stable = await offload(control, config.control_timeout, readiness)
        except Rejected:
            ready, stable = False, 0
        return JSONResponse({"ready": ready, "stable": stable}, 200 if ready else 503)

    def exposition() -> bytes:
        metrics.labels(router)
        return generate_latest(metrics.registry)

    async def metrics_route(request: Request) -> Response:
        try:
            guard.address_limit(request)
            text = await offload(control, config.control_timeout, exposition)
        except Rejected as rejected:
            return refusal(rejected)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    async def page_route(_: Request) -> Response:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    async def card_route(request: Request) -> Response:
        """The model card (``serving.model_card``), or the run report of a label's version."""
        label = request.path_params.get("label")
        try:
            guard.address_limit(request)
            text = await offload(control, config.control_timeout, lambda: model_card(
                router.push_dir, router.versions()) if label is None else report_of(
                router.push_dir, router.versions().get(label, 0)))
        except Rejected as rejected:
            return refusal(rejected)
        if text is None:
            return JSONResponse({"error": f"no run report for label {label!r}"}, 404)
        return HTMLResponse(text, headers=CARD_HEADERS)

    def refresh() -> None:
        router.backend.refresh(set(router.versions().values()))

    async def refreshing() -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(refresher, refresh)
            except Exception:  # noqa: BLE001 - the next round tries again
                LOG.exception("backend refresh failed")
            await asyncio.sleep(config.refresh_interval)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette):
        task = asyncio.get_running_loop().create_task(refreshing())
        try:
            yield
        finally:
            task.cancel()
            for executor in (checks, control, refresher):
                executor.shutdown(wait=False, cancel_futures=True)

    model = "/v1/models/{name}"
    routes = [Route(model, route(status, "status"), methods=["GET"]),
              Route(f"{model}:feedback", route(feedback, "feedback"), methods=["POST"])]
    for target in ("", "/labels/{label}", "/versions/{version}"):
        routes += [Route(f"{model}{target}:classify", route(classify, "classify"),
                         methods=["POST"]),
                   Route(f"{model}{target}:predict", route(predict, "predict"),
                         methods=["POST"])]
    return Starlette(routes=routes + [
        Route("/", page_route), Route("/model-card", card_route),
        Route("/model-card/report/{label}", card_route),
        Route("/healthz", healthz), Route("/readyz", readyz),
        Route("/metrics", metrics_route)], lifespan=lifespan)
