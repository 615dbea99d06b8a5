"""A loopback stand-in for TF Serving's REST API over the real pushed SavedModels.

No TF Serving binary installs on these machines: this serves the two endpoints the gateway's
``HttpBackend`` calls, as TF Serving documents them (model status; ``:predict`` on an explicit
version, row format, 400 for bad input, 404 for a version it does not serve), so tests check
the calls and the answers (a contract test, not a TF Serving deployment). Every request path is
recorded.
"""
from __future__ import annotations

import base64
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def tf_serving_app(push_dir: str, model_name: str, served: list[int], paths: list[str]):
    """TF Serving's REST API for ``served`` versions of ``push_dir``; appends paths to ``paths``."""
    import tensorflow as tf
    models = {v: tf.saved_model.load(os.path.join(push_dir, str(v))) for v in served}

    async def status(request: Request):
        paths.append(request.url.path)
        if request.path_params["name"] != model_name:
            return JSONResponse({"error": "Model not found"}, 404)
        return JSONResponse({"model_version_status": [
            {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK"}}
            for v in served]})

    async def predict(request: Request):
        paths.append(request.url.path)
        version = request.path_params["version"]
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
        Route("/v1/models/{name}/versions/{version:int}:predict", predict, methods=["POST"])])
