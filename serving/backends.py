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
import urllib.error
import urllib.request

from domain import registry
from domain.features import CLASSES, PROBABILITIES, RAW_INPUT, RAW_SIGNATURE


def tf_serving_versions(url: str, model_name: str, timeout: float) -> list[int]:
    """The versions TF Serving at ``url`` reports AVAILABLE for ``model_name`` (none while it
    is unreachable or answers something else)."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/v1/models/{model_name}",
                                    timeout=timeout) as response:
            states = json.load(response)["model_version_status"]
        return sorted(int(s["version"]) for s in states if s["state"] == "AVAILABLE")
    except (OSError, ValueError, KeyError, TypeError):
        return []


class Unavailable(Exception):
    """The backend cannot answer for that version now (not loaded yet, or unreachable)."""


class BadImage(Exception):
    """An image whose header passed the gateway's checks but whose pixels do not decode."""


class LocalBackend:
    """The versions under ``push_dir``, each loaded on first use or by ``refresh``; the
    ``keep`` most recently used stay in memory, and the versions ``refresh`` was last asked
    for (the labelled ones) are never evicted. A load holds only its own version's lock (one
    load per version at a time), so requests for loaded versions never wait for it."""

    def __init__(self, push_dir: str, keep: int = 3):
        self.push_dir, self.keep = push_dir, keep
        self._lock = threading.Lock()  # guards the dicts below; never held while loading
        # version -> its modules.classify.SavedClassifier, the least recently used first
        self._loaded: collections.OrderedDict[int, object] = collections.OrderedDict()
        self._loading: dict[int, threading.Lock] = {}
        self._pinned: set[int] = set()

    def versions(self) -> list[int]:
        return registry.versions(self.push_dir)

    def refresh(self, wanted: set[int]) -> None:
        """Loads the ``wanted`` versions (the labelled ones) and keeps them loaded."""
        with self._lock:
            self._pinned = set(wanted)
        for version in sorted(wanted):
            try:
                self._model(version)
            except Unavailable:
                continue

    def ready(self, version: int) -> bool:
        """Whether ``version`` is loaded (never loads it)."""
        with self._lock:
            return version in self._loaded

    def load(self, version: int) -> None:
        """Loads ``version`` unless it is loaded (``Unavailable`` if it does not load)."""
        self._model(version)

    def _model(self, version: int):
        with self._lock:
            if version in self._loaded:
                self._loaded.move_to_end(version)
                return self._loaded[version]
            loading = self._loading.setdefault(version, threading.Lock())
        with loading:
            try:
                with self._lock:
                    if version in self._loaded:
                        return self._loaded[version]
                loaded = self._load(version)
                with self._lock:
                    self._loaded[version] = loaded
                    spare = [v for v in self._loaded if v not in self._pinned and v != version]
                    while len(self._loaded) > self.keep and spare:
                        del self._loaded[spare.pop(0)]
                return loaded
            finally:
                with self._lock:
                    self._loading.pop(version, None)

    def _load(self, version: int):
        from modules.classify import SavedClassifier  # TensorFlow, once a version loads
        path = os.path.join(self.push_dir, str(version))
        try:
            return SavedClassifier(path)
        except (OSError, ValueError) as err:
            raise Unavailable(f"version {version} does not load from {path}: {err}") from None

    def classify(self, images: list[bytes], version: int):
        """``(probabilities per image, class names)`` from ``version``."""
        from modules.classify import Undecodable
        model = self._model(version)
        try:
            return model.images(images).tolist(), model.class_names
        except Undecodable as err:
            raise BadImage(f"the image does not decode: {err}") from None


class HttpBackend:
    """TF Serving's REST API at ``url`` (``http://host:8501``) for ``model_name``: predictions
    from ``/versions/<v>:predict``; the available versions from its status, which only
    ``refresh`` asks for (the gateway's background task), so no request waits on it. Never
    imports TensorFlow."""

    def __init__(self, url: str, model_name: str, timeout: float = 10.0,
                 status_timeout: float = 2.0):
        self.url, self.model_name = url, model_name
        self.base = f"{url.rstrip('/')}/v1/models/{model_name}"
        self.timeout, self.status_timeout = timeout, status_timeout
        self._available: list[int] = []

    def versions(self) -> list[int]:
        return self._available

    def refresh(self, wanted: set[int]) -> None:
        """Re-reads which versions TF Serving has available (none while it is unreachable)."""
        self._available = tf_serving_versions(self.url, self.model_name, self.status_timeout)

    def ready(self, version: int) -> bool:
        return version in self._available

    def load(self, version: int) -> None:
        """TF Serving loads its versions itself."""

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
            if err.code == 400:  # headers passed the gateway's parser: the pixel data is bad
                raise BadImage("the image does not decode: corrupt or truncated image data "
                               f"(TF Serving answered 400 for {len(images)} image(s))") from None
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
    ``max_batch`` images and ``max_pixels`` decoded pixels. Backend calls run in worker
    threads, never in the event loop. Every waiter gets an answer or an exception, whatever
    the backend raises; a waiter that was cancelled (its request timed out) is skipped. An
    image that does not decode fails its own request only: the batch is split in halves until
    the bad request is alone (log2 of the batch's calls, not one per request)."""

    def __init__(self, backend, max_batch: int = 32, window: float = 0.002,
                 max_pixels: int = 2**24):
        self.backend, self.max_batch, self.window = backend, max_batch, window
        self.max_pixels = max_pixels
        self._pending: dict[int, list] = {}  # version -> [entries, images, pixels]
        self._loads: dict[int, asyncio.Future] = {}  # version -> its one load in progress
        self._running: set[asyncio.Task] = set()  # (the loop keeps only weak references)

    async def classify(self, images: list[bytes], version: int, pixels: int = 0):
        """``(probabilities per image, class names)``, like the backend's ``classify``;
        ``pixels``: what decoding ``images`` materialises."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        batch = self._pending.get(version)
        if batch and (batch[1] + len(images) > self.max_batch
                      or batch[2] + pixels > self.max_pixels):
            self._flush(version, batch)
            batch = None
        if batch is None:
            batch = self._pending[version] = [[], 0, 0]
            loop.call_later(self.window, self._flush, version, batch)
        batch[0].append((images, future))
        batch[1] += len(images)
        batch[2] += pixels
        if batch[1] >= self.max_batch:
            self._flush(version, batch)
        return await future

    def _flush(self, version: int, batch: list) -> None:
        if self._pending.get(version) is batch:
            del self._pending[version]
            task = asyncio.get_running_loop().create_task(self._run(version, batch[0]))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _load(self, version: int) -> None:
        """Waits for ``version`` to be loaded: one load per version in a worker thread, however
        many batches wait for it (none holds a thread meanwhile)."""
        from starlette.concurrency import run_in_threadpool
        if self.backend.ready(version):
            return
        if version not in self._loads:
            load = asyncio.ensure_future(run_in_threadpool(self.backend.load, version))
            load.add_done_callback(lambda _: self._loads.pop(version, None))
            self._loads[version] = load
        await asyncio.shield(self._loads[version])

    async def _run(self, version: int, entries: list) -> None:
        try:
            await self._load(version)
            await self._answer(version, entries)
        except BaseException as err:  # noqa: BLE001 - every waiter hears of it, then re-raise
            failure = err if isinstance(err, Exception) else Unavailable("gateway stopping")
            for _, future in entries:
                if not future.done():
                    future.set_exception(failure)
            if not isinstance(err, Exception):
                raise

    async def _answer(self, version: int, entries: list) -> None:
        from starlette.concurrency import run_in_threadpool
        entries = [(images, future) for images, future in entries if not future.done()]
        if not entries:
            return
        try:
            probabilities, names = await run_in_threadpool(
                self.backend.classify, [i for images, _ in entries for i in images], version)
        except BadImage:
            if len(entries) == 1:
                raise
            half = len(entries) // 2
            results = await asyncio.gather(self._answer(version, entries[:half]),
                                           self._answer(version, entries[half:]),
                                           return_exceptions=True)
            for part, result in ((entries[:half], results[0]), (entries[half:], results[1])):
                for _, future in part:
                    if isinstance(result, BaseException) and not future.done():
                        future.set_exception(result)
            return
        start = 0
        for images, future in entries:
            if not future.done():
                future.set_result((probabilities[start:start + len(images)], names))
            start += len(images)
