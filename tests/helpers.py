"""Helpers more than one test module uses (test modules import them from here, never from
each other). Fixtures shared across modules live in conftest.py."""
from __future__ import annotations

import glob
import io
import json
import os
import socket
import struct
import threading
import time
import zlib

import numpy as np

from domain.features import (CLASSES, PROBABILITIES, RAW_INPUT, RAW_SIGNATURE, TRAINING_FILE,
                             ImageSpec)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---- images


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def webp(size, **options) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    mode = "RGBA" if options.pop("alpha", False) else "RGB"
    Image.new(mode, size[::-1], (10, 200, 30, 128)[:len(mode)]).save(buffer, "WEBP", **options)
    return buffer.getvalue()


def oversized(fmt: str) -> bytes:
    """A header that declares far more pixels than any limit, with next to no data."""
    side = 30_000
    if fmt == "PNG":
        def chunk(kind, data):
            return (struct.pack(">I", len(data)) + kind + data
                    + struct.pack(">I", zlib.crc32(kind + data)))
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0,
                                                                     0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\0" * (side + 1))) + chunk(b"IEND", b""))
    if fmt == "JPEG":  # a real JPEG with its frame header's size patched
        data = bytearray(encode(np.zeros((8, 8), np.uint8), "JPEG"))
        sof = data.index(b"\xff\xc0")
        data[sof + 5:sof + 9] = struct.pack(">HH", side, side)
        return bytes(data)
    if fmt == "GIF":
        return b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\0\0\0" + b";"
    if fmt == "BMP":
        return (b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + struct.pack(
            "<IiiHHIIiiII", 40, side, side, 1, 24, 0, 0, 0, 0, 0, 0))
    if fmt == "WEBP VP8X":  # the 34-byte 16383x16383 of issue 15
        return (b"RIFF" + struct.pack("<I", 26) + b"WEBPVP8X" + struct.pack("<I", 10)
                + b"\0\0\0\0" + (16382).to_bytes(3, "little") * 2 + b"\0" * 4)
    if fmt == "WEBP VP8L":
        bits = 16382 | (16382 << 14)
        return (b"RIFF" + struct.pack("<I", 30) + b"WEBPVP8L" + struct.pack("<I", 5) + b"\x2f"
                + struct.pack("<I", bits) + b"\0" * 8)
    bits = webp((8, 8))  # VP8: patch the frame's 14-bit sizes
    return bits[:26] + struct.pack("<HH", 16383, 16383) + bits[30:]


# ---- what a command imports (run in a child: ``PROBE.format(module=, args=, heavy=HEAVY)``)

HEAVY = ("tensorflow", "tensorflow_model_analysis", "apache_beam", "tensorflow_transform")
PROBE = """
import runpy, sys
sys.argv = [{module!r}, *{args!r}]
try:
    runpy.run_module({module!r}, run_name="__main__")
except SystemExit:
    pass
print(sorted(m for m in {heavy!r} if m in sys.modules))
"""


# ---- servers


def serve(app):
    """Runs ``app`` under uvicorn on a free port; yields its URL."""
    import httpx
    import uvicorn
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    while "/readyz" in {r.path for r in app.routes} and httpx.get(f"{url}/readyz").status_code \
            != 200:  # a gateway: until its background refresh loaded or found the stable version
        time.sleep(0.1)
    yield url
    uv.should_exit = True
    thread.join(5)


# ---- pipeline runs

# The session's digits run (conftest's ``digits_run``): rerun with these flags, it is an
# identical run.
DIGITS_FLAGS = ["--train-steps", "240", "--eval-steps", "10", "--tflite", "float16",
                "--tune", "true", "--tune-trials", "2", "--tune-steps", "20"]


def states(config) -> dict[str, list[int]]:
    """Component name -> the states of its executions in the run's MLMD, oldest first."""
    from domain.mlmd_queries import component_names, metadata_store
    store = metadata_store(config.metadata_path)
    names = component_names(store)
    found: dict[str, list[int]] = {}
    for execution in store.get_executions():
        found.setdefault(names[execution.type_id], []).append(execution.last_known_state)
    return found


def volume_config(volume, *flags: str):
    """The example cluster's options (kfp/README.md: the volume, spans under ``images``, the
    serving dir, MinIO's pipeline root) on a local ``volume`` folder, then ``flags``."""
    from pipeline.config import PipelineConfig
    return PipelineConfig.from_args([
        "--pvc-name", "tfx-image-data", "--pvc-mount-path", str(volume),
        "--data-root", str(volume / "images"), "--spans", "true",
        "--serving-dir", str(volume / "serving"),
        "--pipeline-root", "minio://mlpipeline/v2/artifacts", "--kfp-image", "tip:test",
        *flags], environ={})


def write_examples(directory, records, compression="GZIP"):
    """``(split, serialized example)`` pairs into ``directory/<split>/data.gz``."""
    import tensorflow as tf
    writers = {}
    for split, record in records:
        if split not in writers:
            (directory / split).mkdir(parents=True, exist_ok=True)
            writers[split] = tf.io.TFRecordWriter(str(directory / split / "data.gz"), compression)
        writers[split].write(record)
    for writer in writers.values():
        writer.close()


# ---- the Kubernetes manifests of kfp/serving/

SERVING_MANIFESTS = os.path.join(ROOT, "kfp", "serving")


def _objects() -> list[dict]:
    import yaml
    objects = []
    for path in sorted(glob.glob(os.path.join(SERVING_MANIFESTS, "*.yaml"))):
        if os.path.basename(path) == "kustomization.yaml":  # kustomize's, not an object
            continue
        with open(path) as f:
            objects += [o for o in yaml.safe_load_all(f) if o]
    return objects


OBJECTS = _objects()


def named(kind: str, name: str) -> dict:
    return next(o for o in OBJECTS if o["kind"] == kind and o["metadata"]["name"] == name)


# ---- a tiny served model


def save_tiny_model(directory: str) -> None:
    """A SavedModel with the exported model's raw-bytes signature and names: the real decode
    (``modules.preprocessing.decode_images``) then a fixed linear layer, 8x8x1 -> 3 classes."""
    import tensorflow as tf

    from modules.preprocessing import decode_images
    spec = ImageSpec("image", "label", 8, 8, 1, 3)

    class Tiny(tf.Module):
        def __init__(self):
            super().__init__()
            self.weights = tf.Variable(np.random.default_rng(0).normal(size=(64, 3)),
                                       dtype=tf.float32)
            self.class_names = tf.Variable(["zero", "one", "two"])

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=RAW_INPUT)])
        def serve_image_bytes(self, images):
            pixels = tf.reshape(decode_images(images, spec), [-1, 64])
            probabilities = tf.nn.softmax(pixels @ self.weights)
            return {PROBABILITIES: probabilities,
                    CLASSES: tf.tile(self.class_names[tf.newaxis], [tf.shape(images)[0], 1])}

    model = Tiny()
    tf.saved_model.save(model, directory, signatures={RAW_SIGNATURE: model.serve_image_bytes})
    os.makedirs(os.path.join(directory, os.path.dirname(TRAINING_FILE)))
    with open(os.path.join(directory, TRAINING_FILE), "w") as f:
        json.dump({"image_height": 8, "image_width": 8, "image_channels": 1,
                   "max_pixels": 50_000_000}, f)


def publish_tiny_model(root: str, model_name: str) -> str:
    """A serving dir under ``root`` holding the tiny model as version 1; its base path."""
    from domain import registry
    save_tiny_model(os.path.join(root, "model"))
    base = os.path.join(root, "serving", model_name)
    registry.publish(os.path.join(root, "model"), base, {"action": "push"}, keep=3)
    return base


# ---- a gateway process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gateway(serving_dir: str, log_path: str, *args: str, host: str = "127.0.0.1",
                  port: int = 0, ready: str = "/readyz"):
    """``(process, url)``: ``python -m serving`` on ``serving_dir`` with ``args``, its stderr
    in ``log_path``, once ``ready`` answers 200 (AssertionError with the log if it never
    does)."""
    import subprocess
    import sys
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", "--serving-dir", serving_dir, "--host", host,
         "--port", str(port), *args], cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="1"), stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"))
    url = f"http://{host}:{port}"
    wait_ready(process, url, log_path, ready)
    return process, url


def wait_ready(process, url: str, log_path: str, ready: str = "/readyz") -> None:
    """Until ``url + ready`` answers 200 (at most 2 minutes); AssertionError with the end of
    ``log_path`` if ``process`` ends or it never does (then ``process`` is stopped with a
    SIGTERM, which ``serving.edge`` passes on to its nginx and gateway)."""
    import subprocess

    import httpx
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}{ready}").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
    raise AssertionError("the gateway never got ready: " + open(log_path).read()[-3000:])
