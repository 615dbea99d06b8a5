"""The gateway's endpoints besides classification and feedback: ``/healthz`` (from the event
loop alone), ``/readyz``, ``/metrics``, the model status, the try-it page and the model card
(``serving.model_card``). Every read that touches the router, the backend or files runs in
the control worker threads with their time budget; each route but ``/healthz`` and the page
counts against the client address's rate."""
from __future__ import annotations

import pathlib

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from serving.guard import Guard, refusal
from serving.limits import Rejected, WorkerPool
from serving.metrics import Metrics
from serving.model_card import model_card, report_of
from serving.routing import Router

PAGE = pathlib.Path(__file__).with_name("page.html")  # the try-it page, no build step
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; "
                "style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'",
                "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}
# The model card and run reports: no scripts, images inline.
CARD_HEADERS = {"Content-Security-Policy": "default-src 'none'; img-src data:; "
                "style-src 'unsafe-inline'", "X-Content-Type-Options": "nosniff",
                "X-Frame-Options": "DENY"}


class Control:
    """What ``router`` serves, for operators and browsers; ``guard`` limits each client
    address, ``pool`` runs the reads."""

    def __init__(self, model_name: str, router: Router, metrics: Metrics, guard: Guard,
                 pool: WorkerPool):
        self.model_name, self.router, self.metrics = model_name, router, metrics
        self.guard, self.pool = guard, pool
        self.page_html = PAGE.read_text(encoding="utf-8").replace("__MODEL_NAME__", model_name)

    async def healthz(self, _: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def readiness(self) -> tuple[bool, int]:
        """``(whether the stable version is ready in the backend, its number)``."""
        stable = self.router.versions().get("stable", 0)
        return bool(stable) and self.router.backend.ready(stable), stable

    async def readyz(self, request: Request) -> Response:
        try:
            self.guard.address_limit(request)
        except Rejected as rejected:
            return refusal(rejected)
        try:
            ready, stable = await self.pool.run(self.readiness)
        except Rejected:
            ready, stable = False, 0
        return JSONResponse({"ready": ready, "stable": stable}, 200 if ready else 503)

    async def metrics_text(self, request: Request) -> Response:
        try:
            self.guard.address_limit(request)
            text = await self.pool.run(self.metrics.exposition, self.router)
        except Rejected as rejected:
            return refusal(rejected)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    def state(self) -> dict:
        """The model's name, its labels' versions and the canary's weight."""
        labels = self.router.labels()
        return {"model": self.model_name, "labels": self.router.versions(),
                "canary_weight": labels.canary_weight if labels else 0.0}

    async def status(self, request: Request, body: bytes) -> dict:
        """The guarded ``GET /v1/models/<name>`` handler."""
        return await self.pool.run(self.state)

    async def page(self, _: Request) -> Response:
        return HTMLResponse(self.page_html, headers=PAGE_HEADERS)

    def card_html(self, label: str | None) -> str | None:
        """The model card, or (``label``) the run report of that label's version."""
        if label is None:
            return model_card(self.router.push_dir, self.router.versions())
        return report_of(self.router.push_dir, self.router.versions().get(label, 0))

    async def card(self, request: Request) -> Response:
        label = request.path_params.get("label")
        try:  # the same authentication as predictions: the card names server paths and
            self.guard.identify(request)  # the report shows eval-set images
            text = await self.pool.run(self.card_html, label)
        except Rejected as rejected:
            return refusal(rejected)
        if text is None:
            return JSONResponse({"error": f"no run report for label {label!r}"}, 404)
        return HTMLResponse(text, headers=CARD_HEADERS)
