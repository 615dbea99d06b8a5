"""A real ``dask.distributed`` cluster on loopback (tests and benchmarks): a scheduler and
single-thread workers, each its own process, importing this checkout (the runner module must
import everywhere)."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wait_for(path: str, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            return json.load(open(path))
        time.sleep(0.2)
    raise TimeoutError(f"no Dask scheduler file at {path} after {seconds} s")


@contextlib.contextmanager
def loopback_cluster(workers: int = 2):
    """Yield the scheduler's address once ``workers`` workers have joined; stop them all."""
    import dask.distributed as ddist
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    with tempfile.TemporaryDirectory() as tmp:
        file = os.path.join(tmp, "scheduler.json")
        cli = [sys.executable, "-m"]
        procs = [subprocess.Popen(cli + ["distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                         "--port", "0", "--no-dashboard", "--scheduler-file",
                                         file], env=env, cwd=tmp, stderr=subprocess.DEVNULL)]
        try:
            address = _wait_for(file, 60)["address"]
            procs += [subprocess.Popen(cli + ["distributed.cli.dask_worker", address,
                                              "--nthreads", "1", "--no-nanny", "--no-dashboard",
                                              "--local-directory", tmp], env=env, cwd=tmp,
                                       stderr=subprocess.DEVNULL) for _ in range(workers)]
            if workers:
                with ddist.Client(address, timeout=30) as client:
                    client.wait_for_workers(workers, timeout=120)
            yield address
        finally:  # the workers first: a worker whose scheduler is gone waits for it
            for proc in reversed(procs):
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
