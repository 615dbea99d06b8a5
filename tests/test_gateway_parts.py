"""The gateway's parts, each built and exercised alone (no TensorFlow): the bounded pixel
limits under threads, the worker pools' budgets, the guard in front of a handler, the
feedback intake, the control reads, and TF Serving's status poll with the background refresh
against a real loopback HTTP server."""
from __future__ import annotations

import asyncio
import concurrent.futures
import http.server
import json
import os
import socket
import threading
import time

import jwt
import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from domain.features import TRAINING_FILE
from domain.image_header import pixel_limit
from serving.backends import HttpBackend, LocalBackend, tf_serving_versions
from serving.config import GatewayConfig
from serving.control import Control
from serving.feedback import FEEDBACK_SCOPE, Answers
from serving.feedback_intake import FeedbackIntake
from serving.guard import Guard
from serving.images import PixelLimits
from serving.limits import Rejected, WorkerPool
from serving.metrics import Metrics
from serving.refresh import BackendRefresh
from serving.routing import Router

SECRET = "parts-test-secret-with-at-least-32-bytes"


def _version(push_dir, version: int, side: int) -> None:
    """A version directory holding only the training options the pixel limit comes from."""
    path = push_dir / str(version) / TRAINING_FILE
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"image_height": side, "image_width": side, "max_pixels": 0}))


def test_pixel_limits_are_read_once_per_version_and_stay_bounded_under_threads(tmp_path):
    sides = {v: 300 + v for v in range(1, 41)}
    for version, side in sides.items():
        _version(tmp_path, version, side)
    limits = PixelLimits(str(tmp_path), versions=8)
    expected = {v: pixel_limit(side, side) for v, side in sides.items()}
    asked = [1 + (i * 7) % 40 for i in range(2000)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(limits, asked))
    assert answers == [expected[v] for v in asked]
    assert len(limits) == 8
    assert limits(999) == pixel_limit(0, 0)  # no options: the floor
    assert PixelLimits(str(tmp_path), fixed=1234)(3) == 1234


def test_a_worker_pool_answers_within_its_budget_and_refuses_past_it():
    pool = WorkerPool(1, "test-pool", budget=0.2)

    async def scenario():
        fast = await pool.run(sum, [1, 2, 3])
        with pytest.raises(Rejected) as late:
            await pool.run(time.sleep, 1.0)
        return fast, late.value

    fast, late = asyncio.run(scenario())
    pool.close()
    assert fast == 6
    assert (late.status, late.reason, late.headers) == (503, "timeout", {"Retry-After": "1"})


def _token(**claims) -> str:
    return "Bearer " + jwt.encode({"sub": "alice", "exp": time.time() + 60, **claims}, SECRET,
                                  "HS256")


@pytest.fixture
def guarded():
    """A test client of one handler behind a guard (burst 1 per subject, 100-byte bodies);
    the handler echoes what the guard established, or fails on ``b"fail"``."""
    metrics = Metrics()
    guard = Guard(GatewayConfig(jwt_key=SECRET, burst=1, rate_per_second=0.01, max_bytes=100),
                  metrics)

    async def echo(request, body: bytes) -> dict:
        if body == b"fail":
            raise RuntimeError("a bug in the handler")
        return {"client": request.state.client, "size": len(body),
                "subject": request.state.claims["sub"]}

    app = Starlette(routes=[Route("/v1/models/{name}:echo", guard.endpoint(echo, "echo"),
                                  methods=["POST"])])
    with TestClient(app) as client:
        yield client, metrics


def test_the_guard_admits_a_good_request_and_refuses_the_others_in_order(guarded):
    client, metrics = guarded
    url = "/v1/models/image_classifier:echo"
    ok = client.post(url, content=b"abc", headers={"Authorization": _token()})
    assert ok.json() == {"client": "sub:alice", "size": 3, "subject": "alice"}
    refusals = [
        (client.post("/v1/models/other:echo", headers={"Authorization": _token()}), 404,
         "unknown_model"),
        (client.post(url, content=b"abc"), 401, "no_token"),
        (client.post(url, content=b"x" * 101, headers={"Authorization": _token(sub="bob")}),
         413, "too_large"),
        (client.post(url, headers={"Authorization": _token()}), 429, "rate_limited"),
    ]
    for response, status, reason in refusals:
        assert (response.status_code, response.json()["reason"]) == (status, reason)
    assert refusals[-1][0].headers["Retry-After"]
    failed = client.post(url, content=b"fail", headers={"Authorization": _token(sub="carol")})
    assert (failed.status_code, failed.json()["reason"]) == (500, "internal")
    counted = {s.labels["reason"]: s.value for family in metrics.registry.collect()
               for s in family.samples if s.name == "gateway_rejected_total"}
    assert counted == {"unknown_model": 1, "no_token": 1, "too_large": 1, "rate_limited": 1}


def test_feedback_is_taken_once_with_the_scope_and_a_class_of_the_model(tmp_path):
    answers = Answers(str(tmp_path / "feedback"))
    intake = FeedbackIntake(Router(str(tmp_path), LocalBackend(str(tmp_path))), answers,
                            Metrics(), WorkerPool(1, "test-feedback", 5.0))
    request_id = answers.issue("stable", 1, "cat", ["cat", "dog"])
    body = json.dumps({"request_id": request_id, "class": "dog"}).encode()
    scoped = {"sub": "alice", "scope": f"read {FEEDBACK_SCOPE}"}

    def refused(*args) -> tuple[int, str]:
        with pytest.raises(Rejected) as err:
            intake.record(*args)
        return err.value.status, err.value.reason

    assert refused(body, {"sub": "alice"}, "sub:alice") == (403, "no_feedback_scope")
    assert refused(b'{"request_id": 1}', scoped, "sub:alice") == (400, "bad_request")
    assert refused(json.dumps({"request_id": request_id, "class": "cow"}).encode(), scoped,
                   "sub:alice") == (422, "unknown_class")
    entry = intake.record(body, scoped, "sub:alice")
    assert (entry["predicted"], entry["true"], entry["correct"]) == ("cat", "dog", False)
    assert refused(body, scoped, "sub:alice") == (404, "unknown_request")  # once per answer
    assert intake.record(json.dumps({"request_id": answers.issue("stable", 1, "cat", [
        "cat", "dog"]), "class": "cat"}).encode(), None, "127.0.0.1")["correct"]  # no auth


def test_control_reads_what_the_router_serves(tmp_path):
    guard = Guard(GatewayConfig(auth=False), Metrics())
    control = Control("image_classifier", Router(str(tmp_path), LocalBackend(str(tmp_path))),
                      Metrics(), guard, WorkerPool(1, "test-control", 5.0))
    assert control.readiness() == (False, 0)  # nothing pushed yet
    assert control.state() == {"model": "image_classifier", "labels": {}, "canary_weight": 0.0}
    assert control.card_html("canary") is None
    assert "Nothing is served" in control.card_html(None)
    assert "image_classifier" in control.page_html and "__MODEL_NAME__" not in control.page_html
    assert b"gateway_requests_total" in control.metrics.exposition(control.router)


class _Status(http.server.BaseHTTPRequestHandler):
    """TF Serving's model status: versions 2 (loading) and 3 (available) of model ``m``."""

    def do_GET(self):  # noqa: N802 - the http.server API
        found = self.path == "/v1/models/m"
        self.send_response(200 if found else 404)
        self.end_headers()
        self.wfile.write(json.dumps({"model_version_status": [
            {"version": "2", "state": "LOADING"}, {"version": "3", "state": "AVAILABLE"}]}
            if found else {"error": "no model"}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def tf_serving_status():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_tf_serving_status_is_polled_by_one_function(tf_serving_status):
    assert tf_serving_versions(tf_serving_status, "m", 2.0) == [3]
    assert tf_serving_versions(tf_serving_status + "/", "m", 2.0) == [3]
    assert tf_serving_versions(tf_serving_status, "other", 2.0) == []  # 404
    with socket.socket() as unused:  # a loopback port nothing listens on
        unused.bind(("127.0.0.1", 0))
        assert tf_serving_versions(f"http://127.0.0.1:{unused.getsockname()[1]}", "m",
                                   2.0) == []


def test_the_background_refresh_follows_tf_servings_status(tf_serving_status, tmp_path):
    router = Router(str(tmp_path), HttpBackend(tf_serving_status, "m"))
    refresh = BackendRefresh(router, interval=0.05)

    async def scenario():
        refresh.start()
        for _ in range(100):
            if router.versions():
                break
            await asyncio.sleep(0.05)
        refresh.stop()
        return router.versions()

    assert asyncio.run(scenario()) == {"stable": 3}
    assert os.listdir(tmp_path) == []  # the refresh only reads


def test_native_log_lines_pass_a_few_per_kind_and_window_then_one_count():
    from serving.native_log import LineLimiter
    now = [0.0]
    limiter = LineLimiter(burst=2, window=10, clock=lambda: now[0])
    warning = b"W0000 00:00:17.5  23106 png_io.cc:96] PNG warning: gAMA: invalid %d"
    passed = [limiter.admit(warning % i) for i in range(5)]
    assert passed == [True, True, False, False, False]
    assert limiter.admit(b"INFO: a Python line") and limiter.admit(b"F0000 0:0:0.0 1 x.cc:1] die")
    assert limiter.rollover() == []
    now[0] = 11
    (line,) = limiter.rollover()
    assert json.loads(line) == {"event": "native_log_suppressed", "lines": 3, "seconds": 10,
                                "kind": "png_io.cc:96 PNG warning: gAMA: invalid #"}
    assert limiter.admit(warning % 9)  # a new window


def test_the_edge_without_nginx_fails_in_one_line_naming_make_edge(tmp_path, monkeypatch,
                                                                   capsys):
    """``make serve`` where nginx could not be installed: exit 2 (a user's mistake), one line
    that names ``make edge`` and the package, no gateway started."""
    from serving import edge
    monkeypatch.setattr(edge, "nginx_binary", lambda: "")
    started = []
    monkeypatch.setattr(edge.subprocess, "Popen", lambda *a, **k: started.append(a))
    assert edge.main(["--prefix", str(tmp_path / "edge"), "--", "--no-auth"]) == 2
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1 and "make edge" in error and "nginx-light" in error
    assert started == [] and not (tmp_path / "edge").exists()


@pytest.mark.parametrize("host, expected", [
    ("127.0.0.1", True), ("127.0.3.9", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("10.1.2.3", False), ("::", False), ("gateway.example", False)])
def test_only_loopback_hosts_count_as_behind_the_edge(host, expected):
    from serving.server import loopback
    assert loopback(host) is expected
