"""The gateway over a really pushed model, through a real HTTP server (uvicorn)."""
from __future__ import annotations

import base64
import json
import socket
import threading
import time

import httpx
import jwt
import numpy as np
import pytest

from pipeline import local_runner
from pipeline.config import PipelineConfig
from serving.backends import LocalBackend
from serving.gateway import GatewayConfig, TokenBuckets, create_app
from tests.conftest import encode

SECRET = "test-secret-with-at-least-32-bytes!!"


def _token(**claims) -> str:
    return jwt.encode({"sub": "alice", "exp": time.time() + 60, **claims}, SECRET, "HS256")


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    config = PipelineConfig.from_args(["--work-dir", str(tmp_path_factory.mktemp("gw")),
                                       "--train-steps", "60", "--eval-steps", "5",
                                       "--min-accuracy", "0"], environ={})
    outcome = local_runner.run(config)
    assert outcome.pushed
    return config


@pytest.fixture(scope="module")
def server(pushed):
    import uvicorn
    config = GatewayConfig(jwt_key=SECRET, max_bytes=50_000, max_pixels=100_000,
                           rate_per_second=1.0, burst=3)
    app = create_app(config, LocalBackend(pushed.push_dir))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(5)


def _png(side=8) -> bytes:
    return encode(np.random.default_rng(0).integers(0, 256, (side, side), np.uint8), "PNG")


def _bomb() -> bytes:
    """A few hundred bytes that declare 160,000 pixels."""
    return encode(np.zeros((400, 400), np.uint8), "PNG")


def test_classify_answers_top_classes_and_the_version(server):
    response = httpx.post(f"{server}/v1/models/image_classifier:classify", content=_png(),
                          headers={"Content-Type": "image/png",
                                   "Authorization": f"Bearer {_token(sub='classify')}"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == 1 and len(body["top"]) == 3
    assert abs(sum(t["probability"] for t in body["top"])) <= 1.0 + 1e-6


@pytest.mark.parametrize("headers, content, status, reason", [
    ({}, b"x", 401, "no_token"),
    ({"Authorization": "Bearer " + jwt.encode({"sub": "a", "exp": time.time() - 5}, SECRET,
                                              "HS256")}, b"x", 401, "expired_token"),
    ({"Authorization": "Bearer not-a-jwt"}, b"x", 401, "invalid_token"),
])
def test_missing_expired_or_invalid_tokens_get_401(server, headers, content, status, reason):
    response = httpx.post(f"{server}/v1/models/image_classifier:classify", content=content,
                          headers={"Content-Type": "image/png", **headers})
    assert (response.status_code, response.json()["reason"]) == (status, reason)


@pytest.mark.parametrize("content_type, content, status, reason", [
    ("image/png", b"\0" * 60_000, 413, "too_large"),
    ("text/plain", b"hello", 415, "content_type"),
    ("image/jpeg", None, 415, "magic"),
    ("image/png", "big", 422, "too_many_pixels"),
])
def test_bad_bodies_get_clear_4xx(server, content_type, content, status, reason):
    body = {None: _png(), "big": _bomb()}.get(content, content)
    response = httpx.post(f"{server}/v1/models/image_classifier:classify", content=body,
                          headers={"Content-Type": content_type,
                                   "Authorization": f"Bearer {_token(sub=reason)}"})
    assert (response.status_code, response.json()["reason"]) == (status, reason)


def test_predict_takes_b64_instances(server):
    body = json.dumps({"instances": [{"b64": base64.b64encode(_png()).decode()}] * 2})
    response = httpx.post(f"{server}/v1/models/image_classifier:predict", content=body,
                          headers={"Authorization": f"Bearer {_token(sub='predict')}"})
    assert response.status_code == 200 and len(response.json()["predictions"]) == 2


def test_predict_names_the_instance_that_is_no_image(server):
    body = json.dumps({"instances": [{"b64": base64.b64encode(_png()).decode()},
                                     {"b64": base64.b64encode(b"plain text").decode()}]})
    response = httpx.post(f"{server}/v1/models/image_classifier:predict", content=body,
                          headers={"Authorization": f"Bearer {_token(sub='no-image')}"})
    assert response.status_code == 415
    assert response.json()["error"] == "instance 1 is not a jpeg/png/gif/bmp image"


def test_rate_limit_answers_429_with_retry_after_and_metrics_count_it(server):
    headers = {"Content-Type": "image/png", "Authorization": f"Bearer {_token(sub='burst')}"}
    statuses = [httpx.post(f"{server}/v1/models/image_classifier:classify", content=_png(),
                           headers=headers) for _ in range(5)]
    assert [r.status_code for r in statuses][:3] == [200] * 3
    assert statuses[-1].status_code == 429 and int(statuses[-1].headers["Retry-After"]) >= 1
    metrics = httpx.get(f"{server}/metrics").text
    assert 'gateway_rejected_total{reason="rate_limited"}' in metrics
    assert 'gateway_model_version{label="stable"} 1.0' in metrics


def test_health_and_readiness(server):
    assert httpx.get(f"{server}/healthz").status_code == 200
    assert httpx.get(f"{server}/readyz").json() == {"ready": True}


def test_token_bucket_refills_at_its_rate():
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=2, clock=lambda: now[0])
    assert [buckets.take("c") for _ in range(2)] == [0.0, 0.0]
    assert buckets.take("c") == pytest.approx(0.5)
    now[0] = 0.5
    assert buckets.take("c") == 0.0


def test_the_command_refuses_to_start_without_a_key_unless_told(monkeypatch, capsys):
    from serving.__main__ import main
    monkeypatch.delenv("GATEWAY_JWT_KEY", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["--serving-dir", "nowhere"])
    assert exit_info.value.code == 2
    assert "--jwt-key-file or GATEWAY_JWT_KEY, or --no-auth" in capsys.readouterr().err
