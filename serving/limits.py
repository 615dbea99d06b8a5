"""The gateway's request limits: refusals as ``Rejected``, bodies read within a size, a deadline
and a cap on concurrent bodies, JSON parsed with a depth cap, path parameters validated, and
work that depends on a request run in worker threads with a time budget (never in the event
loop, which must stay free to answer ``/healthz``)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import re

from starlette.requests import ClientDisconnect, Request


class Rejected(Exception):
    """A request the gateway refuses: HTTP ``status`` and a machine-readable ``reason``."""

    def __init__(self, status: int, reason: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.reason, self.headers = status, reason, headers or {}


class WorkerPool:
    """``threads`` worker threads named ``name``, each call refused with 503 when it takes
    over ``budget`` seconds (the thread finishes on its own; work still queued is dropped)."""

    def __init__(self, threads: int, name: str, budget: float):
        self.budget = budget
        self._executor = concurrent.futures.ThreadPoolExecutor(threads, name)

    async def run(self, function, *args):
        """``function(*args)`` in a worker thread, within the budget."""
        future = self._executor.submit(function, *args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.budget)
        except TimeoutError:
            future.cancel()
            raise Rejected(503, "timeout", f"not done within {self.budget:g} s",
                           {"Retry-After": "1"}) from None

    def close(self) -> None:
        """Drops the queued work; running calls finish on their own."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class Bodies:
    """At most ``limit`` request bodies read or handled at once (503 beyond), at most
    ``per_client`` of them for any one client key (a subject, an address: one identity with
    slow bodies cannot hold every slot), each at most ``max_bytes`` (413) and fully received
    within ``timeout`` seconds (408)."""

    def __init__(self, limit: int, max_bytes: int, timeout: float, per_client: int = 0):
        self.max_bytes, self.timeout = max_bytes, timeout
        self.per_client = min(per_client or limit, limit)
        self._free = asyncio.Semaphore(limit)
        self._held: dict[str, int] = {}  # client key -> bodies it holds (event loop only)

    async def __aenter__(self):
        if self._free.locked():
            raise Rejected(503, "busy", "too many requests in progress", {"Retry-After": "1"})
        await self._free.acquire()
        return self

    async def __aexit__(self, *_):
        self._free.release()

    @contextlib.asynccontextmanager
    async def slot(self, *clients: str):
        """One body slot, counted against each of ``clients`` too."""
        keys = set(clients)
        if any(self._held.get(key, 0) >= self.per_client for key in keys):
            raise Rejected(503, "busy", f"more than {self.per_client} requests of this client "
                           "in progress", {"Retry-After": "1"})
        async with self:
            for key in keys:
                self._held[key] = self._held.get(key, 0) + 1
            try:
                yield self
            finally:
                for key in keys:
                    self._held[key] -= 1
                    if not self._held[key]:
                        del self._held[key]

    async def read(self, request: Request) -> bytes:
        """The body, refused as soon as it is known or seen to be too large or too slow; a
        client that leaves mid-body is a 499 (its own doing), never a 500."""
        declared = request.headers.get("content-length", "")
        if declared and (not declared.isdigit() or len(declared) > 18):
            raise Rejected(400, "bad_request", "Content-Length is not a number")
        if declared and int(declared) > self.max_bytes:
            raise Rejected(413, "too_large", f"body of {declared} bytes is over {self.max_bytes}")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise Rejected(413, "too_large", f"body over {self.max_bytes} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise Rejected(408, "body_timeout", f"body not received within {self.timeout:g} s "
                           f"({size} bytes came)", {"Connection": "close"}) from None
        except ClientDisconnect:
            raise Rejected(499, "client_gone", f"the client left after {size} bytes") from None
        return b"".join(chunks)


# JSON strings (their brackets do not nest anything), and the bytes that are not brackets. An
# unterminated string runs to the end of the body: every match attempt at a quote succeeds and
# consumes what it scanned, so no byte is scanned twice (linear time; a pattern that can fail
# after scanning to the end retries at every later quote: quadratic, 26 s for 128 KB).
_STRINGS = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.S)
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


def json_object(body: bytes, expected: str, max_depth: int = 8,
                max_containers: int = 4096) -> dict:
    """``body`` as a JSON object, after checking (in linear time, before parsing) that it
    nests at most ``max_depth`` deep (400 naming ``expected`` otherwise) and has at most
    ``max_containers`` arrays and objects (413)."""
    skeleton = _STRINGS.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in skeleton[:2 * max_containers + 1]:
        depth += 1 if byte in b"[{" else -1
        deepest = max(deepest, depth)
    if deepest > max_depth:
        raise Rejected(400, "bad_request", f"expected {expected}: JSON nested {deepest} deep, "
                       f"more than {max_depth}")
    if len(skeleton) > 2 * max_containers:
        raise Rejected(413, "too_many_values", f"expected {expected}: more than "
                       f"{max_containers} arrays and objects")
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as err:
        raise Rejected(400, "bad_request", f"expected {expected}: {err}") from None
    if not isinstance(value, dict):
        raise Rejected(400, "bad_request", f"expected {expected}: not an object")
    return value


_VERSION = re.compile(r"[1-9][0-9]{0,17}")


def version_number(text: str) -> int:
    """A version path parameter as a number; 404 for anything but 1 to 18 digits."""
    if not _VERSION.fullmatch(text):
        raise Rejected(404, "no_route", f"no version {text[:20]!r}")
    return int(text)
