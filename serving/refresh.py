"""The gateway's background refresh: every ``interval`` seconds, in a thread of its own, the
backend loads the labelled versions (in-process) or re-reads TF Serving's status, so no
request waits for either and ``/readyz`` only reads state."""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging

from serving.routing import Router

LOG = logging.getLogger("gateway")


class BackendRefresh:
    """Refreshes ``router``'s backend with the versions the labels route to; ``start`` and
    ``stop`` in the event loop (the app's lifespan)."""

    def __init__(self, router: Router, interval: float):
        self.router, self.interval = router, interval
        self._thread = concurrent.futures.ThreadPoolExecutor(1, "gateway-refresh")
        self._task: asyncio.Task | None = None

    def once(self) -> None:
        self.router.backend.refresh(set(self.router.versions().values()))

    async def _rounds(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(self._thread, self.once)
            except Exception:  # noqa: BLE001 - the next round tries again
                LOG.exception("backend refresh failed")
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._rounds())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._thread.shutdown(wait=False, cancel_futures=True)
