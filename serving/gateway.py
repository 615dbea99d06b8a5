"""The prediction gateway: the protections of a public image endpoint in front of a model.

Requests pass, in order: JWT authentication (401), the per-client token bucket (429 with
Retry-After), the size limit (413, from Content-Length and while reading), the Content-Type and
magic-byte check (415), and the pixel count read from the image header before any decoding
(422). Only then does the ``Router`` pick the label (``stable``, or ``canary`` for its share)
and version, and its backend classifies: SavedModels in-process, or TF Serving's REST API.
Every rejection is one JSON log line (reason, client, size, route) and a
``gateway_rejected_total{reason}`` count. Answers carry a request id for later feedback.
"""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import pathlib
import threading
import time

import jwt
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from modules.features import MAX_PIXELS
from serving.backends import BadImage, Batcher, Unavailable
from serving.feedback import FEEDBACK_SCOPE, Answers, BadFeedback, UnknownRequest
from serving.routing import NoRoute, Router

LOG = logging.getLogger("gateway")
PAGE = pathlib.Path(__file__).with_name("page.html")  # the try-it page, no build step
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; "
                "style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'",
                "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}
# Content types a client may send, and the magic bytes each must start with.
MAGIC = {"image/jpeg": (b"\xff\xd8\xff",), "image/png": (b"\x89PNG\r\n\x1a\n",),
         "image/gif": (b"GIF87a", b"GIF89a"), "image/bmp": (b"BM",)}


class Rejected(Exception):
    """A request the gateway refuses: HTTP ``status`` and a machine-readable ``reason``."""

    def __init__(self, status: int, reason: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.reason, self.headers = status, reason, headers or {}


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    """The gateway's limits and keys."""

    model_name: str = "image_classifier"
    max_bytes: int = 10 * 2**20
    max_pixels: int = MAX_PIXELS
    auth: bool = True
    jwt_key: str = ""  # HS256 secret, or an RS256 public key (PEM)
    rate_per_second: float = 10.0
    burst: int = 20
    top_k: int = 3
    max_batch: int = 32  # images per backend call, from concurrent requests
    batch_window: float = 0.002  # seconds a request waits for others to batch with


class TokenBuckets:
    """Per-client token buckets: ``rate`` tokens a second, at most ``burst`` saved."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0 if the client may go now, else the seconds until a token is free."""
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[client] = (tokens - 1, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate


def image_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from the image header, without decoding pixels."""
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = None  # the gateway applies its own limit, with its own status
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def check_image(data: bytes, content_type: str, max_pixels: int) -> None:
    """Raises ``Rejected`` (415/422) unless ``data`` is an allowed image type whose magic bytes
    match ``content_type`` and whose header declares at most ``max_pixels`` pixels."""
    kind = content_type.split(";")[0].strip().lower()
    if kind not in MAGIC:
        raise Rejected(415, "content_type", f"Content-Type {kind or 'missing'} is not one of "
                       f"{', '.join(MAGIC)}")
    if not data.startswith(MAGIC[kind]):
        raise Rejected(415, "magic", f"the body does not start like {kind}")
    try:
        width, height = image_size(data)
    except Exception as err:  # noqa: BLE001 - any unreadable header is the client's fault
        raise Rejected(422, "unreadable", f"unreadable image header: {err}") from None
    if width * height > max_pixels:
        raise Rejected(422, "too_many_pixels", f"{width}x{height} is more than "
                       f"max_pixels={max_pixels}")


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


def client_of(request: Request, claims: dict | None) -> str:
    """The rate-limited client: the token's subject, else the peer address."""
    if claims and claims.get("sub"):
        return f"sub:{claims['sub']}"
    return f"ip:{request.client.host if request.client else 'unknown'}"


def authenticate(request: Request, config: GatewayConfig) -> dict | None:
    """The verified JWT claims (401 when missing, expired or invalid); None without auth."""
    if not config.auth:
        return None
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        raise Rejected(401, "no_token", "missing bearer token",
                       {"WWW-Authenticate": "Bearer"})
    try:
        # The key decides the algorithm: a public key never verifies an HMAC-signed token.
        algorithm = "RS256" if config.jwt_key.lstrip().startswith("-----BEGIN") else "HS256"
        return jwt.decode(header[7:].strip(), config.jwt_key, algorithms=[algorithm],
                          options={"require": ["exp"]})
    except jwt.ExpiredSignatureError:
        raise Rejected(401, "expired_token", "token expired",
                       {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
    except jwt.PyJWTError as err:
        raise Rejected(401, "invalid_token", f"invalid token: {err}",
                       {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it is known or seen to exceed ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise Rejected(413, "too_large", f"body of {declared} bytes is over {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise Rejected(413, "too_large", f"body over {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def uploaded_image(request: Request, body: bytes) -> tuple[bytes, str]:
    """``(image bytes, content type)`` of a raw body, or of the one file in a multipart form."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return body, content_type

    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1,
                                     max_fields=10).parse()
    except (MultiPartException, ValueError) as err:
        raise Rejected(400, "bad_multipart", f"unreadable multipart body: {err}") from None
    files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
    if not files:
        raise Rejected(400, "bad_multipart", "the multipart body has no file part")
    return await files[0].read(), files[0].content_type or ""


def _json(body: bytes, expected: str) -> dict:
    try:
        value = json.loads(body)
        if not isinstance(value, dict):
            raise ValueError("not an object")
        return value
    except ValueError as err:
        raise Rejected(400, "bad_request", f"expected {expected}: {err}") from None


def create_app(config: GatewayConfig, router: Router, answers: Answers,
               metrics: Metrics | None = None, buckets: TokenBuckets | None = None) -> Starlette:
    """The gateway: ``router`` picks the label and version, its backend classifies, and
    ``answers`` keeps the answers that feedback may come for."""
    metrics = metrics or Metrics()
    buckets = buckets or TokenBuckets(config.rate_per_second, config.burst)
    batcher = Batcher(router.backend, config.max_batch, config.batch_window)
    page = PAGE.read_text(encoding="utf-8").replace("__MODEL_NAME__", config.model_name)

    async def guarded(request: Request, route: str, handle) -> Response:
        start, claims, size = time.perf_counter(), None, 0
        try:
            if request.path_params["name"] != config.model_name:
                raise Rejected(404, "unknown_model", f"no model {request.path_params['name']}")
            claims = request.state.claims = authenticate(request, config)
            wait = buckets.take(client_of(request, claims))
            if wait:
                raise Rejected(429, "rate_limited", "too many requests",
                               {"Retry-After": str(max(1, round(wait + 0.5)))})
            body = await read_body(request, config.max_bytes)
            size = len(body)
            response = JSONResponse(await handle(request, body))
        except Rejected as rejected:
            metrics.rejected.labels(rejected.reason).inc()
            LOG.warning(json.dumps({"event": "rejected", "reason": rejected.reason,
                                    "client": client_of(request, claims), "size": size,
                                    "route": route, "status": rejected.status}))
            response = JSONResponse({"error": str(rejected), "reason": rejected.reason},
                                    rejected.status, headers=rejected.headers)
        except Exception:  # noqa: BLE001 - one request's failure never takes the gateway down
            LOG.exception("unexpected failure on %s", route)
            response = JSONResponse({"error": "internal error", "reason": "internal"}, 500)
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - start)
        return response

    async def answer(request: Request, images: list[bytes]) -> list[dict]:
        try:
            label, version = router.choose(request.path_params.get("label", ""),
                                           request.path_params.get("version", 0))
        except NoRoute as err:
            raise Rejected(err.status, "no_route", str(err)) from None
        start = time.perf_counter()
        try:
            probabilities, names = await batcher.classify(images, version)
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

    async def classify(request: Request, body: bytes) -> dict:
        image, content_type = await uploaded_image(request, body)
        check_image(image, content_type, config.max_pixels)
        return (await answer(request, [image]))[0]

    async def predict(request: Request, body: bytes) -> dict:
        try:
            instances = _json(body, '{"instances": [{"b64": ...}]}')["instances"]
            images = [base64.b64decode(item["b64"], validate=True) for item in instances]
        except (ValueError, KeyError, TypeError) as err:
            raise Rejected(400, "bad_request", f'expected {{"instances": [{{"b64": ...}}]}}: '
                           f"{err}") from None
        if not images:
            raise Rejected(400, "bad_request", "no instances")
        for index, image in enumerate(images):
            kind = next((k for k, magics in MAGIC.items() if image.startswith(magics)), "")
            if not kind:
                raise Rejected(415, "magic", f"instance {index} is not a "
                               f"{'/'.join(k.split('/')[1] for k in MAGIC)} image")
            check_image(image, kind, config.max_pixels)
        return {"predictions": await answer(request, images)}

    async def feedback(request: Request, body: bytes) -> dict:
        value = _json(body, '{"request_id": ..., "class": ...}')
        if not isinstance(value.get("request_id"), str) or not isinstance(value.get("class"),
                                                                          str):
            raise Rejected(400, "bad_request", 'expected {"request_id": "...", "class": "..."}')
        claims = request.state.claims
        if claims is not None and FEEDBACK_SCOPE not in str(claims.get("scope", "")).split():
            raise Rejected(403, "no_feedback_scope",
                           f"feedback needs a token with the {FEEDBACK_SCOPE!r} scope")
        try:
            entry = answers.record(value["request_id"], value["class"],
                                   client_of(request, claims), router.class_names)
        except UnknownRequest as err:
            raise Rejected(404, "unknown_request", err.args[0]) from None
        except BadFeedback as err:
            raise Rejected(422, "unknown_class", str(err)) from None
        metrics.feedback.labels(entry["label"], str(entry["correct"]).lower()).inc()
        return {"request_id": entry["request_id"], "correct": entry["correct"]}

    async def status(request: Request, body: bytes) -> dict:
        labels = router.labels()
        return {"model": config.model_name, "labels": router.versions(),
                "canary_weight": labels.canary_weight if labels else 0.0}

    def route(handle, name):
        async def endpoint(request: Request) -> Response:
            return await guarded(request, name, handle)
        return endpoint

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        stable = router.versions().get("stable", 0)
        ready = bool(stable) and router.backend.ready(stable)
        return JSONResponse({"ready": ready, "stable": stable}, 200 if ready else 503)

    async def metrics_route(_: Request) -> Response:
        metrics.labels(router)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def page_route(_: Request) -> Response:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    model = "/v1/models/{name}"
    routes = [Route(model, route(status, "status"), methods=["GET"]),
              Route(f"{model}:feedback", route(feedback, "feedback"), methods=["POST"])]
    for target in ("", "/labels/{label}", "/versions/{version:int}"):
        routes += [Route(f"{model}{target}:classify", route(classify, "classify"),
                         methods=["POST"]),
                   Route(f"{model}{target}:predict", route(predict, "predict"),
                         methods=["POST"])]
    return Starlette(routes=routes + [
        Route("/", page_route), Route("/healthz", healthz), Route("/readyz", readyz),
        Route("/metrics", metrics_route)])
