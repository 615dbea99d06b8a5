"""What a request passes before its handler, in order: the per-address token bucket
(``serving.rate``: every request, authenticated or not; 429), the model name in the path
(404), the JWT (``serving.auth``: 401), the per-subject bucket (429), and the body's size,
deadline and concurrency (``serving.limits``: 413/408/503). Every refusal is one JSON log
line (reason, client, size, route) and a ``gateway_rejected_total{reason}`` count."""
from __future__ import annotations

import json
import logging
import time
from typing import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serving.auth import TokenPolicy
from serving.config import GatewayConfig
from serving.limits import Bodies, Rejected
from serving.metrics import Metrics
from serving.rate import Peers, TokenBuckets

LOG = logging.getLogger("gateway")
# A guarded handler: the request and its whole body -> the JSON answer.
Handler = Callable[[Request, bytes], Awaitable[dict]]


def refusal(rejected: Rejected) -> JSONResponse:
    """The JSON answer to a refused request."""
    return JSONResponse({"error": str(rejected), "reason": rejected.reason}, rejected.status,
                        headers=rejected.headers)


class Guard:
    """The protections in front of a handler (``endpoint``), and the per-address limit alone
    for the routes without a body (``address_limit``). Counts and logs every refusal; a
    handler's own failure is a 500, never a crash. Sets ``request.state.claims`` (None
    without authentication) and ``request.state.client`` (``sub:...`` or the address)."""

    def __init__(self, config: GatewayConfig, metrics: Metrics,
                 buckets: TokenBuckets | None = None):
        self.model_name, self.metrics = config.model_name, metrics
        self.peers = Peers(config.trusted_proxies)
        self.by_address = TokenBuckets(config.address_rate, config.address_burst)
        self.by_subject = buckets or TokenBuckets(config.rate_per_second, config.burst)
        self.policy = TokenPolicy(config.jwt_key, config.issuer, config.audience,
                                  config.max_token_lifetime) if config.auth else None
        self.bodies = Bodies(config.max_bodies, config.max_bytes, config.body_timeout,
                             config.max_bodies_per_client)

    @staticmethod
    def _take(buckets: TokenBuckets, client: str) -> None:
        wait = buckets.take(client)
        if wait:
            raise Rejected(429, "rate_limited", "too many requests",
                           {"Retry-After": str(max(1, round(wait + 0.5)))})

    def address_limit(self, request: Request) -> None:
        """429 when the request's client address is over its rate."""
        self._take(self.by_address, f"ip:{self.peers.client(request)}")

    def identify(self, request: Request) -> str:
        """The request's client after the address limit, the JWT and the subject's limit
        (``sub:...``, or the address without authentication); sets ``request.state``'s
        ``claims`` and ``client``; ``Rejected`` otherwise."""
        client = self.peers.client(request)
        request.state.claims = None
        self.address_limit(request)
        if self.policy:
            claims = request.state.claims = self.policy.claims(
                request.headers.get("authorization", ""))
            client = f"sub:{claims['sub'][:64]}"
            self._take(self.by_subject, client)
        request.state.client = client
        return client

    def endpoint(self, handle: Handler, route: str):
        """The Starlette endpoint of ``handle``, behind the guard; ``route`` names it in
        metrics and logs."""
        async def guarded(request: Request) -> Response:
            return await self(request, route, handle)
        return guarded

    async def __call__(self, request: Request, route: str, handle: Handler) -> Response:
        start, size = time.perf_counter(), 0
        client = address = self.peers.client(request)
        request.state.claims = None
        try:
            if request.path_params["name"] != self.model_name:
                self.address_limit(request)
                raise Rejected(404, "unknown_model",
                               f"no model {request.path_params['name'][:64]!r}")
            client = self.identify(request)
            async with self.bodies.slot(client, address):
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
