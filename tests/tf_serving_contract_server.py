"""A loopback stand-in for TF Serving's REST API over the real pushed SavedModels.

No TF Serving binary installs on these machines: this serves the two endpoints the gateway's
``HttpBackend`` calls, as TF Serving documents them (model status; ``:predict`` on an explicit
version, row format, 400 for bad input, 404 for a version it does not serve), so tests check
the calls and the answers (a contract test, not a TF Serving deployment). Every request path is
recorded.

With ``served=None`` it follows ``models.config`` as TF Serving does (``--model_config_file``
with ``--model_config_file_poll_wait_seconds``): every poll it re-reads the file, loads the
versions the policy names (LOADING, then AVAILABLE) and unloads the others, and applies the
``version_labels`` only if every labelled version is AVAILABLE, as ServerCore does unless
``--allow_version_labels_for_unavailable_models`` is set, and that flag only for a label not
assigned yet; a refused config keeps the previous labels and is logged in ``errors``
(serving_config.md, "Assigning labels"). Labels answer on ``/labels/<label>:predict``.
"""
from __future__ import annotations

import base64
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


class ConfigFollower:
    """TF Serving's model manager for one model: what ``models.config`` asks, polled."""

    def __init__(self, push_dir: str, allow_unavailable_labels: bool = False):
        self.push_dir, self.allow = push_dir, allow_unavailable_labels
        self.models: dict[int, object] = {}  # AVAILABLE versions
        self.labels: dict[str, int] = {}
        self.errors: list[str] = []

    def poll(self) -> None:
        """One poll: re-read the config, label what may be labelled, load, unload."""
        import tensorflow as tf
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2
        with open(os.path.join(self.push_dir, "models.config"), encoding="utf-8") as f:
            config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
        model = config.model_config_list.config[0]
        present = sorted(int(n) for n in os.listdir(self.push_dir) if n.isdigit())
        policy = model.model_version_policy
        wanted = set(policy.specific.versions) if policy.HasField("specific") else \
            set(present[-(policy.latest.num_versions or 1):])
        # Labels are applied with the config, before the new versions finish loading.
        refused = [f"Request to assign label to version {v} of model {model.name}, which is "
                   f"not currently available for inference" for label, v in
                   model.version_labels.items() if v not in self.models and not (
                       self.allow and label not in self.labels)]
        if refused:
            self.errors.append(refused[0])
        else:
            self.labels = dict(model.version_labels)
        for version in sorted(wanted - set(self.models)):
            self.models[version] = tf.saved_model.load(os.path.join(self.push_dir,
                                                                    str(version)))
        for version in set(self.models) - wanted:
            del self.models[version]
        self.labels = {k: v for k, v in self.labels.items() if v in self.models}

    def follow(self, poll_seconds: float, stop) -> None:
        while not stop.is_set():
            try:
                self.poll()
            except Exception as err:  # noqa: BLE001 - TF Serving logs and keeps polling
                self.errors.append(repr(err))
            stop.wait(poll_seconds)


def tf_serving_app(push_dir: str, model_name: str, served: list[int] | None, paths: list[str],
                   follower: ConfigFollower | None = None):
    """TF Serving's REST API for ``served`` versions of ``push_dir`` (None: those that
    ``follower`` loaded from ``models.config``); appends paths to ``paths``."""
    import tensorflow as tf
    models = follower.models if follower else {
        v: tf.saved_model.load(os.path.join(push_dir, str(v))) for v in served}

    async def status(request: Request):
        paths.append(request.url.path)
        if request.path_params["name"] != model_name:
            return JSONResponse({"error": "Model not found"}, 404)
        return JSONResponse({"model_version_status": [
            {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK"}}
            for v in sorted(models)]})

    async def predict(request: Request):
        paths.append(request.url.path)
        version = request.path_params.get("version")
        if "label" in request.path_params:
            version = follower.labels.get(request.path_params["label"]) if follower else None
        if version not in models:
            return JSONResponse({"error": f"Servable not found for request: Specific("
                                          f"{model_name}, {version})"}, 404)
        body = await request.json()
        signature = models[version].signatures[body["signature_name"]]
        (name, _), = signature.structured_input_signature[1].items()
        try:
            images = [base64.b64decode(i[name]["b64"]) for i in body["instances"]]
            outputs = signature(**{name: tf.constant(images)})
        except tf.errors.InvalidArgumentError as err:
            return JSONResponse({"error": err.message}, 400)
        columns = {k: v.numpy().tolist() for k, v in outputs.items()}
        rows = [{k: (v[i].decode() if isinstance(v[i], bytes) else
                     [x.decode() if isinstance(x, bytes) else x for x in v[i]]
                     if isinstance(v[i], list) else v[i]) for k, v in columns.items()}
                for i in range(len(images))]
        return JSONResponse({"predictions": rows})

    return Starlette(routes=[
        Route("/v1/models/{name}", status),
        Route("/v1/models/{name}/versions/{version:int}:predict", predict, methods=["POST"]),
        Route("/v1/models/{name}/labels/{label}:predict", predict, methods=["POST"])])
