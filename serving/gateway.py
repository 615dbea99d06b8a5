"""The prediction gateway: the protections of a public image endpoint in front of a model.

Requests pass, in order: the size limit (413, checked from Content-Length and while reading),
JWT authentication (401), the per-client token bucket (429 with Retry-After), the Content-Type
and magic-byte check (415), and the pixel count read from the image header before any
decoding (422). Only then does the backend classify: the newest pushed SavedModel in-process,
or a TF Serving REST endpoint. Every rejection is one JSON log line (reason, client, size,
route) and a ``gateway_rejected_total{reason}`` count.
"""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import threading
import time
import uuid

import jwt
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modules.features import MAX_PIXELS

LOG = logging.getLogger("gateway")
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
    jwt_algorithms: tuple[str, ...] = ("HS256", "RS256")
    rate_per_second: float = 10.0
    burst: int = 20
    top_k: int = 3


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
        self.version = Gauge("gateway_model_version", "The model version that answers",
                             ["label"], registry=self.registry)


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
        return jwt.decode(header[7:].strip(), config.jwt_key,
                          algorithms=list(config.jwt_algorithms),
                          options={"require": ["exp"]})
    except jwt.ExpiredSignatureError:
        raise Rejected(401, "expired_token", "token expired",
                       {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
    except jwt.InvalidTokenError as err:
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


def create_app(config: GatewayConfig, backend, metrics: Metrics | None = None,
               buckets: TokenBuckets | None = None) -> Starlette:
    """The gateway over ``backend`` (``classify(list[bytes]) -> (version, probabilities,
    class names)`` and ``ready()``)."""
    metrics = metrics or Metrics()
    buckets = buckets or TokenBuckets(config.rate_per_second, config.burst)

    async def guarded(request: Request, route: str, handle) -> Response:
        start, claims, size = time.perf_counter(), None, 0
        try:
            if request.path_params["name"] != config.model_name:
                raise Rejected(404, "unknown_model", f"no model {request.path_params['name']}")
            claims = authenticate(request, config)
            wait = buckets.take(client_of(request, claims))
            if wait:
                raise Rejected(429, "rate_limited", "too many requests",
                               {"Retry-After": str(max(1, round(wait + 0.5)))})
            body = await read_body(request, config.max_bytes)
            size = len(body)
            response = JSONResponse(handle(request, body))
        except Rejected as rejected:
            metrics.rejected.labels(rejected.reason).inc()
            LOG.warning(json.dumps({"event": "rejected", "reason": rejected.reason,
                                    "client": client_of(request, claims), "size": size,
                                    "route": route, "status": rejected.status}))
            response = JSONResponse({"error": str(rejected), "reason": rejected.reason},
                                    rejected.status, headers=rejected.headers)
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - start)
        return response

    def answer(images: list[bytes]) -> list[dict]:
        version, probabilities, names = backend.classify(images)
        metrics.version.labels("stable").set(version)
        results = []
        for row in probabilities:
            top = sorted(range(len(row)), key=lambda i: -row[i])[:config.top_k]
            results.append({"request_id": uuid.uuid4().hex, "model_version": version,
                            "top": [{"class": names[i], "probability": float(row[i])}
                                    for i in top]})
        return results

    def classify(request: Request, body: bytes) -> dict:
        content_type = request.headers.get("content-type", "")
        check_image(body, content_type, config.max_pixels)
        return answer([body])[0]

    def predict(request: Request, body: bytes) -> dict:
        try:
            instances = json.loads(body)["instances"]
            images = [base64.b64decode(item["b64"], validate=True) for item in instances]
        except (ValueError, KeyError, TypeError) as err:
            raise Rejected(400, "bad_request", f'expected {{"instances": [{{"b64": ...}}]}}: '
                           f"{err}") from None
        for index, image in enumerate(images):
            kind = next((k for k, magics in MAGIC.items() if image.startswith(magics)), "")
            if not kind:
                raise Rejected(415, "magic", f"instance {index} is not a "
                               f"{'/'.join(k.split('/')[1] for k in MAGIC)} image")
            check_image(image, kind, config.max_pixels)
        return {"predictions": answer(images)}

    async def classify_route(request: Request) -> Response:
        return await guarded(request, "classify", classify)

    async def predict_route(request: Request) -> Response:
        return await guarded(request, "predict", predict)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        ready = backend.ready()
        return JSONResponse({"ready": ready}, 200 if ready else 503)

    async def metrics_route(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/v1/models/{name}:classify", classify_route, methods=["POST"]),
        Route("/v1/models/{name}:predict", predict_route, methods=["POST"]),
        Route("/healthz", healthz), Route("/readyz", readyz),
        Route("/metrics", metrics_route)])
