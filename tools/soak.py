"""A soak of the serving registry's seams (``bench/bench_seams.py``, and a short one in the
tests): real processes at once against one serving dir — pushes gated against the version they
saw served (as a run's pusher is), ``ops.labels`` canaries, promotions and rollbacks,
``ops.rollback`` — with ``kill -9`` at random moments, while gateway processes take traffic
and feedback (each answer graded through another replica); then the repair every next command
does, ``domain.registry.check``'s invariants, every request answered (200), and the
feedback log against the feedback the gateways accepted.
"""
from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

from domain import registry
from domain.labels import LABELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A run's push: the served version it was gated against, then (training) a while later the
# publish, a compare-and-set against it.
PUSH = """
import sys, time
from domain import registry
base, model, wait = sys.argv[1], sys.argv[2], float(sys.argv[3])
served = registry.served_version(base)
time.sleep(wait)
try:
    print("pushed", registry.publish(model, base, {"action": "push", "model_uri": model},
                                        keep=3, expected_served=served))
except registry.ServedChanged as err:
    print("refused:", err)
"""


def _command(kind: str, base: str, model: str, rng: random.Random) -> list[str]:
    present = registry.versions(base) or [1]
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
         seed: int = 0, gateways: tuple[str, ...] = (), jwt_key: str = "",
         feedback_dir: str = "") -> dict:
    """Runs the mix for ``seconds`` (``parallel`` processes at a time, about ``kill_rate``
    SIGKILLs a second) while ``gateways`` (URLs, tokens signed with ``jwt_key``, logging to
    ``feedback_dir``) take traffic; returns the counts and the invariants' violations."""
    from serving.feedback import read_feedback
    stop, traffic_counts = threading.Event(), collections.Counter()
    logged_before = {e["request_id"] for e in read_feedback(feedback_dir)} \
        if feedback_dir else set()
    traffic = threading.Thread(target=_traffic, args=(gateways, jwt_key, stop, traffic_counts),
                               daemon=True)
    if gateways:
        traffic.start()
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
    stop.set()
    if gateways:
        traffic.join()
    registry.repair(base)  # what the next command does first
    path = os.path.join(base, LABELS)
    with open(path if os.path.exists(path) else os.devnull, encoding="utf-8") as f:
        history = json.loads(f.read() or "{}").get("history", [])
    return {"seconds": round(time.monotonic() - start, 1), "processes": sum(counts.values()),
            "outcomes": dict(sorted(counts.items())),
            "kills": sum(v for k, v in counts.items() if k.endswith("killed")),
            "pushed versions": len(registry.read_manifest(base)),
            "label changes": sum(h.get("event") == "effective" for h in history),
            "requests": dict(sorted(traffic_counts.items())),
            "violations": registry.check(base) + _feedback_lost(
                feedback_dir, logged_before, traffic_counts) + [
                f"{count} requests answered {status}" for status, count
                in traffic_counts.items() if not status.endswith(" 200")]}


def _traffic(gateways: tuple[str, ...], key: str, stop: threading.Event,
             counts: collections.Counter) -> None:
    """Classifies on one gateway and grades the answer through the next (4 clients)."""
    import io

    import httpx
    import jwt
    import numpy as np
    from PIL import Image

    def png(pixels) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return buffer.getvalue()

    def client(index: int) -> None:
        rng = np.random.default_rng(index)
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                token = jwt.encode({"sub": f"client-{index}", "exp": time.time() + 600,
                                    "scope": "feedback"}, key, "HS256")
                headers = {"Authorization": f"Bearer {token}"}
                first, second = rng.permutation(len(gateways))[:2]
                answer = http.post(f"{gateways[first]}/v1/models/image_classifier:classify",
                                   content=png(rng.integers(0, 256, (8, 8), np.uint8)),
                                   headers={"Content-Type": "image/png", **headers})
                counts[f"classify {answer.status_code}"] += 1
                if answer.status_code != 200:
                    continue
                body = answer.json()
                graded = http.post(f"{gateways[second]}/v1/models/image_classifier:feedback",
                                   json={"request_id": body["request_id"],
                                         "class": body["top"][0]["class"]}, headers=headers)
                counts[f"feedback {graded.status_code}"] += 1

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(client, range(4)))


def _feedback_lost(feedback_dir: str, before: set[str],
                   counts: collections.Counter) -> list[str]:
    """Feedback a gateway accepted (200) but the shared log lacks, or logged twice."""
    if not feedback_dir:
        return []
    from serving.feedback import read_feedback
    ids = [e["request_id"] for e in read_feedback(feedback_dir)
           if e["request_id"] not in before]
    problems = [f"{len(ids) - len(set(ids))} feedback entries logged twice"] \
        if len(ids) != len(set(ids)) else []
    if len(ids) != counts["feedback 200"]:
        problems.append(f"{counts['feedback 200']} feedback accepted, {len(ids)} logged")
    return problems


def tiny_model(path: str, classes: list[str], pad_megabytes: int = 0) -> str:
    """A SavedModel with the gateway's raw-bytes signature (the class is the byte count
    modulo the number of classes), padded in ``assets.extra`` so that a kill can land in the
    middle of copying it."""
    import tensorflow as tf

    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            self.class_names = tf.Variable(classes)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, image_bytes):
            return {"probabilities": tf.one_hot(tf.strings.length(image_bytes) % len(classes),
                                                len(classes))}

    model = Model()
    tf.saved_model.save(model, path, signatures={"serving_image_bytes": model.serve})
    if pad_megabytes:
        os.makedirs(os.path.join(path, "assets.extra"), exist_ok=True)
        with open(os.path.join(path, "assets.extra", "pad"), "wb") as f:
            f.write(os.urandom(pad_megabytes * 2**20))
    return path


def start_gateway(serving: str, feedback: str, key_file: str) -> tuple[subprocess.Popen, str]:
    """``python -m serving`` on a free port, once ``/readyz`` answers."""
    import httpx
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "serving", "--serving-dir", serving,
                                "--feedback-dir", feedback, "--port", str(port),
                                "--jwt-key-file", key_file, "--rate", "1000", "--burst",
                                "1000", "--address-rate", "5000", "--address-burst", "5000"],
                               cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            raise RuntimeError(f"the gateway did not start: {process.stderr.read()[-2000:]}")
        time.sleep(0.2)
