"""Where the gateway's predictions come from: the newest pushed SavedModel loaded in-process
(no TF Serving binary installs here), or a TF Serving REST endpoint in a cluster."""
from __future__ import annotations

import base64
import json
import os
import threading
import urllib.request

from components import serving_dir
from modules.features import PROBABILITIES, RAW_INPUT, RAW_SIGNATURE


class LocalBackend:
    """The highest version under ``push_dir``, reloaded when a newer one (or a rollback) shows."""

    def __init__(self, push_dir: str):
        self.push_dir = push_dir
        self._lock = threading.Lock()
        self._loaded: tuple[int, object, list[str]] | None = None

    def _current(self):
        versions = serving_dir.versions(self.push_dir)
        if not versions:
            raise RuntimeError(f"no model version under {self.push_dir}")
        with self._lock:
            if self._loaded is None or self._loaded[0] != versions[-1]:
                import tensorflow as tf
                model = tf.saved_model.load(os.path.join(self.push_dir, str(versions[-1])))
                names = [n.decode() for n in model.class_names.numpy()]
                self._loaded = (versions[-1], model, names)
            return self._loaded

    def ready(self) -> bool:
        try:
            self._current()
            return True
        except (RuntimeError, OSError):
            return False

    def classify(self, images: list[bytes]):
        import tensorflow as tf
        version, model, names = self._current()
        outputs = model.signatures[RAW_SIGNATURE](**{RAW_INPUT: tf.constant(images)})
        return version, outputs[PROBABILITIES].numpy().tolist(), names


class HttpBackend:
    """TF Serving's REST predict API at ``url`` (``http://host:8501``) for ``model_name``."""

    def __init__(self, url: str, model_name: str, timeout: float = 10.0):
        self.base = f"{url.rstrip('/')}/v1/models/{model_name}"
        self.timeout = timeout

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(self.base + path, timeout=self.timeout) as response:
            return json.load(response)

    def ready(self) -> bool:
        try:
            states = self._get("")["model_version_status"]
            return any(s["state"] == "AVAILABLE" for s in states)
        except (OSError, ValueError, KeyError):
            return False

    def classify(self, images: list[bytes]):
        body = json.dumps({"signature_name": RAW_SIGNATURE, "instances": [
            {RAW_INPUT: {"b64": base64.b64encode(image).decode()}} for image in images]})
        request = urllib.request.Request(self.base + ":predict", body.encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            predictions = json.load(response)["predictions"]
        metadata = self._get("/metadata")
        version = int(metadata["model_spec"]["version"])
        names = [str(i) for i in range(len(predictions[0][PROBABILITIES]))]
        return version, [p[PROBABILITIES] for p in predictions], names
