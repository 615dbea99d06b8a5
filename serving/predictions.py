"""The ``:classify`` and ``:predict`` handlers: a request's label and version (the
``Router``), its images parsed and checked against that version's pixel limit in one
worker-thread hop (``serving.images``), then the version's answer through the ``Batcher``:
the ``top_k`` classes of each image, each with a signed request id for later feedback."""
from __future__ import annotations

import asyncio
import time

from starlette.datastructures import Headers
from starlette.requests import Request

from serving.backends import BadImage, Batcher, Unavailable
from serving.config import GatewayConfig
from serving.feedback import Answers
from serving.images import (PixelLimits, allowed_type, check_images, predict_instances,
                            uploaded_image)
from serving.limits import Rejected, WorkerPool, version_number
from serving.metrics import Metrics
from serving.routing import NoRoute, Router


class Predictions:
    """Answers classification requests routed by ``router``; ``checks``: the worker threads
    of routing and image checks; ``pixel_limits``: each version's pixels per image."""

    def __init__(self, config: GatewayConfig, router: Router, batcher: Batcher,
                 answers: Answers, metrics: Metrics, checks: WorkerPool,
                 pixel_limits: PixelLimits):
        self.config, self.router, self.batcher = config, router, batcher
        self.answers, self.metrics, self.checks = answers, metrics, checks
        self.pixel_limits = pixel_limits

    async def classify(self, request: Request, body: bytes) -> dict:
        """One image, the raw body or a multipart form's file."""
        route = await self._checked(request, self._image, request.headers, body)
        return (await self._answer(*route))[0]

    async def predict(self, request: Request, body: bytes) -> dict:
        """``{"instances": [{"b64": ...}, ...]}`` -> ``{"predictions": [...]}``."""
        return {"predictions": await self._answer(*await self._checked(
            request, self._instances, body))}

    def _image(self, headers: Headers, body: bytes, limit: int) -> tuple[list[bytes], int]:
        image, content_type = uploaded_image(headers, body)
        return [image], check_images([image], [allowed_type(content_type)], limit,
                                     self.config.max_batch_pixels)

    def _instances(self, body: bytes, limit: int) -> tuple[list[bytes], int]:
        images = predict_instances(body, self.config.max_instances, self.config.max_json_depth)
        return images, check_images(images, [""] * len(images), limit,
                                    self.config.max_batch_pixels)

    def route(self, label: str, version_text: str) -> tuple[str, int, int]:
        """``(label, version, pixel limit)`` for a request's path (in a worker thread)."""
        version = version_number(version_text) if version_text else 0
        try:
            label, version = self.router.choose(label, version)
        except NoRoute as err:
            raise Rejected(err.status, "no_route", str(err)[:200]) from None
        return label, version, self.pixel_limits(version)

    async def _checked(self, request: Request, parse, *args) -> tuple:
        """``(label, version, images, decoded pixels)``: the request's route, then
        ``parse(*args, pixel limit)`` -> ``(images, pixels)``, in one worker-thread hop."""
        params = request.path_params

        def work():
            label, version, limit = self.route(params.get("label", ""),
                                               params.get("version", ""))
            return (label, version, *parse(*args, limit))
        return await self.checks.run(work)

    async def _answer(self, label: str, version: int, images: list[bytes],
                      pixels: int) -> list[dict]:
        """The answer of each image, from ``version`` within the model's time budget."""
        start, timeout = time.perf_counter(), self.config.model_timeout
        try:
            probabilities, names = await asyncio.wait_for(
                self.batcher.classify(images, version, pixels), timeout)
        except TimeoutError:
            raise Rejected(503, "timeout", f"version {version} did not answer within "
                           f"{timeout:g} s", {"Retry-After": "5"}) from None
        except Unavailable as err:
            raise Rejected(503, "unavailable", str(err), {"Retry-After": "5"}) from None
        except BadImage as err:
            raise Rejected(422, "undecodable", str(err)) from None
        self.metrics.model_latency.labels(label).observe(time.perf_counter() - start)
        self.metrics.predictions.labels(label, str(version)).inc(len(images))
        return [self._result(label, version, row, names) for row in probabilities]

    def _result(self, label: str, version: int, row: list[float], names: list[str]) -> dict:
        """One image's top classes, with the request id its feedback will name."""
        top = sorted(range(len(row)), key=lambda i: -row[i])[:self.config.top_k]
        return {"request_id": self.answers.issue(label, version, names[top[0]], names),
                "model_version": version, "label": label,
                "top": [{"class": names[i], "probability": float(row[i])} for i in top]}
