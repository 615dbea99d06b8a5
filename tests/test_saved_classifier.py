"""One way to classify with a pushed SavedModel (``modules.classify``), shared by the gateway's
in-process backend and ``ops.predict``; and the gateway's prediction handlers alone over that
backend (a small real SavedModel: the exported raw-bytes signature on an 8x8 grey input)."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from starlette.requests import Request

from ops.predict import predict
from serving.backends import BadImage, Batcher, LocalBackend
from serving.config import GatewayConfig
from serving.feedback import Answers
from serving.images import PixelLimits
from serving.limits import Rejected, WorkerPool
from serving.metrics import Metrics
from serving.predictions import Predictions
from serving.routing import Router
from tests.helpers import publish_tiny_model

MODEL = "image_classifier"


def png(side: int = 8, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side), np.uint8)).save(
        buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def push_dir(tmp_path_factory) -> str:
    return publish_tiny_model(str(tmp_path_factory.mktemp("classifier")), MODEL)


def test_ops_predict_and_the_gateway_backend_answer_alike(push_dir):
    from modules.classify import SavedClassifier, Undecodable
    model = SavedClassifier(os.path.join(push_dir, "1"))
    assert model.class_names == ["zero", "one", "two"]
    images = [png(seed=i) for i in range(3)]
    rows = model.images(images)
    backend, _ = LocalBackend(push_dir).classify(images, 1)
    np.testing.assert_allclose(backend, rows, rtol=1e-6)
    answered = predict(push_dir, images + [png()[:60], b"junk"], top_k=2)
    assert [top[0][0] for top in answered[:3]] == [model.class_names[r.argmax()] for r in rows]
    assert answered[3].startswith("corrupt or truncated image data")
    assert answered[4].startswith("not a JPEG, PNG, GIF, BMP or WebP image")
    with pytest.raises(Undecodable, match="not a JPEG"):
        model.images([b"junk"])
    with pytest.raises(BadImage, match="^the image does not decode: not a JPEG"):
        LocalBackend(push_dir).classify([b"junk"], 1)


def request(path_params: dict, content_type: str = "image/png") -> Request:
    return Request({"type": "http", "method": "POST", "path": "/", "query_string": b"",
                    "headers": [(b"content-type", content_type.encode())],
                    "path_params": {"name": MODEL, **path_params}})


def test_the_prediction_handlers_alone(push_dir, tmp_path):
    router = Router(push_dir, LocalBackend(push_dir))
    answers = Answers(str(tmp_path / "feedback"))
    config = GatewayConfig(max_instances=4)
    predictions = Predictions(config, router, Batcher(router.backend), answers, Metrics(),
                              WorkerPool(2, "test-checks", 5.0), PixelLimits(push_dir))
    body = json.dumps({"instances": [{"b64": base64.b64encode(png(seed=i)).decode()}
                                     for i in range(2)]}).encode()

    def refused(coroutine) -> tuple[int, str]:
        with pytest.raises(Rejected) as err:
            asyncio.run(coroutine)
        return err.value.status, err.value.reason

    answered = asyncio.run(predictions.predict(request({}), body))["predictions"]
    assert [(a["label"], a["model_version"], len(a["top"])) for a in answered] == [
        ("stable", 1, 3)] * 2
    assert answers.answer(answered[0]["request_id"])["predicted"] == answered[0]["top"][0][
        "class"]
    one = asyncio.run(predictions.classify(request({"version": "1"}), png()))
    assert one["top"][0]["class"] == answered[0]["top"][0]["class"]
    assert predictions.route("", "") == ("stable", 1, 2**20)  # the 8x8 model's floor
    big = io.BytesIO()
    Image.new("L", (2000, 2000)).save(big, format="PNG")  # 4 Mi pixels over 1 Mi
    assert refused(predictions.classify(request({}), big.getvalue())) == (422,
                                                                          "too_many_pixels")
    assert refused(predictions.classify(request({"version": "7"}), png())) == (404, "no_route")
    assert refused(predictions.classify(request({}), png()[:60])) == (422, "undecodable")
    assert refused(predictions.classify(request({}, "text/plain"), png())) == (415,
                                                                              "content_type")
