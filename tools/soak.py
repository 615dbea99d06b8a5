"""A soak of the serving registry's seams (``bench/bench_seams.py``, and a short one in the
tests): real processes at once against one serving dir — pushes gated against the version they
saw served (as a run's pusher is), ``ops.labels`` canaries, promotions and rollbacks,
``ops.rollback`` — with ``kill -9`` at random moments; then the repair every next command
does and ``components.serving_dir.check``'s invariants.
"""
from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time

from components import serving_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A run's push: the served version it was gated against, then (training) a while later the
# publish, a compare-and-set against it.
PUSH = """
import sys, time
from components import serving_dir
base, model, wait = sys.argv[1], sys.argv[2], float(sys.argv[3])
served = serving_dir.served_version(base)
time.sleep(wait)
try:
    print("pushed", serving_dir.publish(model, base, {"action": "push", "model_uri": model},
                                        keep=3, expected_served=served))
except serving_dir.ServedChanged as err:
    print("refused:", err)
"""


def _command(kind: str, base: str, model: str, rng: random.Random) -> list[str]:
    present = serving_dir.versions(base) or [1]
    version = str(rng.choice(present))
    labels = [sys.executable, "-m", "ops.labels", "--push-dir", base]
    return {
        "push": [sys.executable, "-c", PUSH, base, model, f"{rng.uniform(0, 0.5):.2f}"],
        "canary": labels + ["canary", "--version", version, "--weight", "0.3"],
        "promote": labels + ["promote"],
        "label_rollback": labels + ["rollback", "--to-version", version],
        "rollback": [sys.executable, "-m", "ops.rollback", "--push-dir", base, "--to-version",
                     version, "--reason", "soak", "--keep-versions", "3"],
    }[kind]


def soak(base: str, model: str, seconds: float, parallel: int = 4, kill_rate: float = 1.0,
         seed: int = 0) -> dict:
    """Runs the mix for ``seconds`` (``parallel`` processes at a time, about ``kill_rate``
    SIGKILLs a second); returns the counts and the invariants' violations."""
    rng = random.Random(seed)
    counts: collections.Counter = collections.Counter()
    running: list[tuple[subprocess.Popen, str]] = []
    kinds = ["push", "push", "canary", "promote", "label_rollback", "rollback"]
    start = time.monotonic()
    last = start
    while time.monotonic() - start < seconds or running:
        for process, kind in list(running):
            if process.poll() is not None:
                running.remove((process, kind))
                out = process.stdout.read()
                counts[f"{kind}: " + ("killed" if process.returncode == -9 else
                                      "refused" if "refused" in out or process.returncode else
                                      "done")] += 1
        now = time.monotonic()
        if now - start < seconds and len(running) < parallel:
            kind = rng.choice(kinds)
            running.append((subprocess.Popen(_command(kind, base, model, rng), cwd=ROOT,
                                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                             text=True), kind))
        if running and rng.random() < kill_rate * (now - last):
            process, _ = rng.choice(running)
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
        last = now
        time.sleep(0.02)
    serving_dir.repair(base)  # what the next command does first
    path = os.path.join(base, serving_dir.LABELS)
    with open(path if os.path.exists(path) else os.devnull, encoding="utf-8") as f:
        history = json.loads(f.read() or "{}").get("history", [])
    return {"seconds": round(time.monotonic() - start, 1), "processes": sum(counts.values()),
            "outcomes": dict(sorted(counts.items())),
            "kills": sum(v for k, v in counts.items() if k.endswith("killed")),
            "pushed versions": len(serving_dir.read_manifest(base)),
            "label changes": sum(h.get("event") == "effective" for h in history),
            "violations": serving_dir.check(base)}


def model_dir(path: str, megabytes: int = 8) -> str:
    """A stand-in model folder big enough that a kill can land mid-copy."""
    os.makedirs(os.path.join(path, "variables"), exist_ok=True)
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(b"graph")
    for i in range(4):
        with open(os.path.join(path, "variables", f"part-{i}"), "wb") as f:
            f.write(os.urandom(megabytes * 2**20 // 4))
    return path
