"""Where the gateway's predictions come from: pushed SavedModels loaded in-process (no TF Serving
binary installs here), or a TF Serving REST endpoint in a cluster. Both answer for an explicit
version, chosen by the gateway's ``Router``."""
from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import threading
import time
import urllib.error
import urllib.request

from components import serving_dir
from modules.features import CLASSES, PROBABILITIES, RAW_INPUT, RAW_SIGNATURE


def _cause(message: str, images: list[bytes]) -> str:
    """A decode error in words (of the image, when there is one)."""
    from modules.preprocessing import decode_failure
    return "the image does not decode: " + decode_failure(
        message, images[0] if len(images) == 1 else None)


class Unavailable(Exception):
    """The backend cannot answer for that version now (not loaded yet, or unreachable)."""


class BadImage(Exception):
    """An image whose header passed the gateway's checks but whose pixels do not decode."""


class LocalBackend:
    """The versions under ``push_dir``, each loaded on first use; the ``keep`` most recently
    used stay in memory (stable and canary at once, plus one being rolled to)."""

    def __init__(self, push_dir: str, keep: int = 3):
        self.push_dir, self.keep = push_dir, keep
        self._lock = threading.Lock()
        self._loaded: collections.OrderedDict[int, tuple] = collections.OrderedDict()

    def versions(self) -> list[int]:
        return serving_dir.versions(self.push_dir)

    def _model(self, version: int):
        with self._lock:
            if version not in self._loaded:
                import tensorflow as tf
                path = os.path.join(self.push_dir, str(version))
                try:
                    model = tf.saved_model.load(path)
                except (OSError, ValueError) as err:
                    raise Unavailable(f"version {version} does not load from {path}: "
                                      f"{err}") from None
                names = [n.decode() for n in model.class_names.numpy()]
                self._loaded[version] = (model, names)
                while len(self._loaded) > self.keep:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(version)
            return self._loaded[version]

    def ready(self, version: int) -> bool:
        try:
            self._model(version)
            return True
        except Unavailable:
            return False

    def classify(self, images: list[bytes], version: int):
        """``(probabilities per image, class names)`` from ``version``."""
        import tensorflow as tf
        model, names = self._model(version)
        try:
            outputs = model.signatures[RAW_SIGNATURE](**{RAW_INPUT: tf.constant(images)})
        except tf.errors.InvalidArgumentError as err:
            raise BadImage(_cause(err.message, images)) from None
        return outputs[PROBABILITIES].numpy().tolist(), names


class HttpBackend:
    """TF Serving's REST API at ``url`` (``http://host:8501``) for ``model_name``: predictions
    from ``/versions/<v>:predict``; the available versions from its status, cached for
    ``status_ttl`` seconds."""

    def __init__(self, url: str, model_name: str, timeout: float = 10.0,
                 status_ttl: float = 2.0):
        self.base = f"{url.rstrip('/')}/v1/models/{model_name}"
        self.timeout, self.status_ttl = timeout, status_ttl
        self._status: tuple[float, list[int]] = (float("-inf"), [])

    def versions(self) -> list[int]:
        checked, available = self._status
        if time.monotonic() - checked > self.status_ttl:
            try:
                with urllib.request.urlopen(self.base, timeout=self.timeout) as response:
                    states = json.load(response)["model_version_status"]
                available = sorted(int(s["version"]) for s in states
                                   if s["state"] == "AVAILABLE")
            except (OSError, ValueError, KeyError):
                available = []
            self._status = (time.monotonic(), available)
        return available

    def ready(self, version: int) -> bool:
        return version in self.versions()

    def classify(self, images: list[bytes], version: int):
        body = json.dumps({"signature_name": RAW_SIGNATURE, "instances": [
            {RAW_INPUT: {"b64": base64.b64encode(image).decode()}} for image in images]})
        request = urllib.request.Request(f"{self.base}/versions/{version}:predict",
                                         body.encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                predictions = json.load(response)["predictions"]
        except urllib.error.HTTPError as err:
            text = err.read()[:500].decode(errors="replace")
            if err.code == 400:
                raise BadImage(_cause(text, images)) from None
            raise Unavailable(f"TF Serving answered {err.code} for version {version}: "
                              f"{text[:200]}") from None
        except OSError as err:
            raise Unavailable(f"TF Serving at {self.base} is unreachable: {err}") from None
        first = predictions[0]
        names = first.get(CLASSES) or [str(i) for i in range(len(first[PROBABILITIES]))]
        return [p[PROBABILITIES] for p in predictions], names


class Batcher:
    """Concurrent requests for one version share one backend call, as TF Serving's batching
    does: the first request of a batch waits up to ``window`` seconds for others, up to
    ``max_batch`` images. Backend calls run in worker threads, never in the event loop. An
    image that does not decode fails its own request only."""

    def __init__(self, backend, max_batch: int = 32, window: float = 0.002):
        self.backend, self.max_batch, self.window = backend, max_batch, window
        self._pending: dict[int, list[tuple[list[bytes], asyncio.Future]]] = {}

    async def classify(self, images: list[bytes], version: int):
        """``(probabilities per image, class names)``, like the backend's ``classify``."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        batch = self._pending.setdefault(version, [])
        batch.append((images, future))
        if len(batch) == 1:
            loop.call_later(self.window, self._flush, version, batch)
        if sum(len(i) for i, _ in batch) >= self.max_batch:
            self._flush(version, batch)
        return await future

    def _flush(self, version: int, batch: list) -> None:
        if self._pending.get(version) is batch:
            del self._pending[version]
            asyncio.get_running_loop().create_task(self._run(version, batch))

    async def _run(self, version: int, batch: list) -> None:
        from starlette.concurrency import run_in_threadpool
        try:
            probabilities, names = await run_in_threadpool(
                self.backend.classify, [i for images, _ in batch for i in images], version)
        except BadImage as err:
            if len(batch) == 1:
                batch[0][1].set_exception(err)
                return
            for images, future in batch:  # one call each, to find whose image it was
                try:
                    future.set_result(await run_in_threadpool(self.backend.classify, images,
                                                              version))
                except (BadImage, Unavailable) as single:
                    future.set_exception(single)
            return
        except Exception as err:  # noqa: BLE001 - every waiting request hears of it
            for _, future in batch:
                future.set_exception(err)
            return
        start = 0
        for images, future in batch:
            future.set_result((probabilities[start:start + len(images)], names))
            start += len(images)
