"""The gateway over a really pushed model, through a real HTTP server (uvicorn)."""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import time

import httpx
import jwt
import numpy as np
import pytest

from domain import registry
from domain.labels import Labels, read_labels, set_labels
from ops import labels as labels_command
from serving.backends import LocalBackend
from serving.feedback import Answers
from serving.gateway import GatewayConfig, create_app
from serving.rate import TokenBuckets
from serving.routing import Router
from tests.conftest import encode
from tests.helpers import serve

SECRET = "test-secret-with-at-least-32-bytes!!"


def _token(**claims) -> str:
    return jwt.encode({"sub": "alice", "exp": time.time() + 60, **claims}, SECRET, "HS256")


@pytest.fixture(scope="module")
def pushed(digits_run):
    """The config of the session's digits run (conftest), which pushed version 1."""
    return digits_run[0]


def gateway(push_dir: str, **limits):
    config = GatewayConfig(jwt_key=SECRET, max_bytes=50_000, max_pixels=100_000, **limits)
    return create_app(config, Router(push_dir, LocalBackend(push_dir)),
                      Answers(os.path.join(push_dir, "feedback")))


@pytest.fixture(scope="module")
def server(pushed):
    yield from serve(gateway(pushed.push_dir, rate_per_second=1.0, burst=3))


@pytest.fixture(scope="module")
def two_versions(pushed, tmp_path_factory):
    """A serving dir with versions 1 and 2 (a copy of the pushed model) under a gateway whose
    rate limit stays out of the way."""
    push_dir = str(tmp_path_factory.mktemp("labels") / "image_classifier")
    source = os.path.join(pushed.push_dir, "1")
    for _ in range(2):
        registry.publish(source, push_dir, {"action": "push"}, keep=5)
    yield from ((push_dir, url) for url in serve(gateway(push_dir, rate_per_second=1000.0,
                                                         burst=1000)))


def _headers(sub: str, content_type: str = "image/png", **claims) -> dict:
    return {"Content-Type": content_type,
            "Authorization": f"Bearer {_token(sub=sub, **claims)}"}


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
    assert body["model_version"] == 1 and body["label"] == "stable" and len(body["top"]) == 3
    assert all(t["class"].isdigit() for t in body["top"])  # the digits' class names
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
    assert response.json()["error"] == ("instance 1: the body does not start like a JPEG, PNG, "
                                        "GIF, BMP or WebP image")


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
    assert httpx.get(f"{server}/readyz").json() == {"ready": True, "stable": 1}


def test_classify_takes_a_multipart_upload(server):
    response = httpx.post(f"{server}/v1/models/image_classifier:classify",
                          files={"image": ("digit.png", _png(), "image/png")},
                          headers={"Authorization": f"Bearer {_token(sub='multipart')}"})
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == 1


def test_an_image_whose_pixels_do_not_decode_gets_422_not_5xx(server):
    truncated = _png(32)[:60]  # a valid header, then nothing
    response = httpx.post(f"{server}/v1/models/image_classifier:classify", content=truncated,
                          headers=_headers("truncated"))
    assert response.status_code == 422, response.text
    assert response.json()["reason"] == "undecodable"
    assert "function_node" not in response.json()["error"]


def test_the_page_is_served_with_a_content_security_policy(server):
    response = httpx.get(server)
    assert response.status_code == 200 and 'const model = "image_classifier"' in response.text
    assert "default-src 'self'" in response.headers["content-security-policy"]


def _classify(url: str, path: str = "", sub: str = "labels") -> dict:
    response = httpx.post(f"{url}/v1/models/image_classifier{path}:classify", content=_png(),
                          headers=_headers(sub))
    assert response.status_code == 200, response.text
    return response.json()


def test_canary_gets_its_share_and_rollback_is_instant(two_versions, capsys):
    push_dir, url = two_versions
    assert labels_command.main(["--push-dir", push_dir, "canary", "--version", "2",
                                "--weight", "0.5"]) == 0
    before = {v: os.stat(os.path.join(push_dir, str(v))).st_mtime_ns for v in (1, 2)}
    answered = [_classify(url) for _ in range(40)]
    assert {(a["label"], a["model_version"]) for a in answered} == {("stable", 1),
                                                                    ("canary", 2)}
    assert _classify(url, "/labels/canary")["model_version"] == 2
    assert _classify(url, "/versions/1")["label"] == ""  # by number: never A/B evidence
    metrics = httpx.get(f"{url}/metrics").text
    assert 'gateway_model_version{label="canary"} 2.0' in metrics
    assert 'gateway_canary_weight 0.5' in metrics
    canary_count = sum(a["label"] == "canary" for a in answered) + 1
    assert f'gateway_predictions_total{{label="canary",version="2"}} {canary_count}.0' in metrics

    assert labels_command.main(["--push-dir", push_dir, "rollback", "--reason", "test"]) == 0
    assert {_classify(url)["model_version"] for _ in range(20)} == {1}
    assert httpx.post(f"{url}/v1/models/image_classifier/labels/canary:classify",
                      content=_png(), headers=_headers("gone")).status_code == 404
    assert before == {v: os.stat(os.path.join(push_dir, str(v))).st_mtime_ns for v in (1, 2)}
    assert 'gateway_model_version{label="canary"}' not in httpx.get(f"{url}/metrics").text


def test_feedback_is_taken_once_and_compare_reports_per_version_accuracy(two_versions,
                                                                          capsys):
    push_dir, url = two_versions
    assert labels_command.main(["--push-dir", push_dir, "canary", "--version", "2",
                                "--weight", "0.5"]) == 0
    answers = [_classify(url, f"/labels/{label}") for label in ("stable", "canary") * 3]
    for answer in answers:
        predicted = answer["top"][0]["class"]
        true = predicted if answer["label"] == "canary" else answer["top"][1]["class"]
        response = httpx.post(f"{url}/v1/models/image_classifier:feedback",
                              json={"request_id": answer["request_id"], "class": true},
                              headers=_headers("feedback", "application/json",
                                               scope="feedback"))
        assert response.json() == {"request_id": answer["request_id"],
                                   "correct": answer["label"] == "canary"}
    again = httpx.post(f"{url}/v1/models/image_classifier:feedback",
                       json={"request_id": answers[0]["request_id"], "class": "1"},
                       headers=_headers("feedback", "application/json", scope="feedback"))
    assert (again.status_code, again.json()["reason"]) == (404, "unknown_request")
    capsys.readouterr()
    assert labels_command.main(["--push-dir", push_dir, "compare", "--min-samples", "3"]) == 0
    report = capsys.readouterr().out.splitlines()
    assert report[1].split() == ["stable", "1", "3", "0", "0.000"]
    assert report[2].split() == ["canary", "2", "3", "3", "1.000"]
    assert "difference +1.000" in report[3]
    # 3 right against 3 wrong shows non-inferiority (p=3e-5), but not the 100 answers planned:
    assert labels_command.main(["--push-dir", push_dir, "promote", "--require-evidence"]) == 1
    assert "not enough feedback" in capsys.readouterr().err
    assert read_labels(push_dir).canary == 2
    assert labels_command.main(["--push-dir", push_dir, "promote", "--require-evidence",
                                "--min-samples", "3"]) == 0
    assert read_labels(push_dir) == Labels(stable=2)
    assert _classify(url)["model_version"] == 2


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


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "outputs", "screenshots",
                          "try-it.png")


@pytest.mark.skipif(not CHROMIUM, reason="no Chromium on this machine: `make test` installs "
                    "Debian's chromium where apt-get can (browser downloads are unreachable)")
def test_the_try_it_page_classifies_a_chosen_and_a_dropped_image_in_chromium(server, pushed,
                                                                            tmp_path):
    from playwright.sync_api import sync_playwright

    from ops.predict import predict
    images = {"chosen.png": _png(8), "dropped.png": encode(
        np.random.default_rng(7).integers(0, 256, (24, 24, 3), np.uint8), "PNG")}
    expected = {name: predict(pushed.push_dir, [data])[0][0][0] for name, data in images.items()}
    (tmp_path / "chosen.png").write_bytes(images["chosen.png"])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.goto(server)
            page.fill("#token", _token(sub="browser"))
            page.dispatch_event("#token", "change")
            page.set_input_files("#file", str(tmp_path / "chosen.png"))
            page.wait_for_selector(".row.top .class")
            assert page.inner_text(".row.top .class") == expected["chosen.png"]
            assert page.locator(".row").count() == 3
            assert page.inner_text("#version").startswith("Answered by version 1 (stable)")
            assert page.eval_on_selector("#preview", "img => img.naturalWidth") == 8
            page.screenshot(path=SCREENSHOT, full_page=True)

            page.evaluate("""async ([name, b64]) => {
                const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                const data = new DataTransfer();
                data.items.add(new File([bytes], name, {type: "image/png"}));
                document.getElementById("drop").dispatchEvent(
                    new DragEvent("drop", {dataTransfer: data, bubbles: true}));
            }""", ["dropped.png", base64.b64encode(images["dropped.png"]).decode()])
            page.wait_for_function("document.querySelector('#preview').naturalWidth === 24")
            page.wait_for_selector(".row.top .class")
            assert page.inner_text(".row.top .class") == expected["dropped.png"]
            assert page.inner_text("#error") == ""
        finally:
            browser.close()
    assert os.path.getsize(SCREENSHOT) > 5_000


@pytest.fixture(scope="module")
def over_tf_serving(pushed, tmp_path_factory):
    """The gateway with ``HttpBackend`` in front of a TF Serving REST stand-in that serves
    version 1 of a serving dir holding versions 1 and 2."""
    from serving.backends import HttpBackend
    from tests.tf_serving_contract_server import tf_serving_app
    push_dir = str(tmp_path_factory.mktemp("http") / "image_classifier")
    for _ in range(2):
        registry.publish(os.path.join(pushed.push_dir, "1"), push_dir, {"action": "push"},
                            keep=5)
    paths: list[str] = []
    for tf_serving in serve(tf_serving_app(push_dir, "image_classifier", [1], paths)):
        config = GatewayConfig(jwt_key=SECRET, rate_per_second=1000.0, burst=1000)
        backend = HttpBackend(tf_serving, "image_classifier")
        config = dataclasses.replace(config, refresh_interval=60)
        app = create_app(config, Router(push_dir, backend),
                         Answers(os.path.join(push_dir, "feedback")))
        for url in serve(app):
            yield push_dir, url, paths


def test_over_tf_serving_the_answer_names_classes_and_the_version_asked_for(over_tf_serving,
                                                                           server):
    push_dir, url, paths = over_tf_serving
    answers = [_classify(url, sub="http") for _ in range(4)]
    local = _classify(server, sub="local-twin")  # the same model, in-process
    assert {a["model_version"] for a in answers} == {1}
    # Names, not ids, and the same numbers as in-process:
    assert [t["class"] for t in answers[0]["top"]] == [t["class"] for t in local["top"]]
    assert [t["probability"] for t in answers[0]["top"]] == pytest.approx(
        [t["probability"] for t in local["top"]], abs=1e-6)
    assert paths.count("/v1/models/image_classifier/versions/1:predict") == 4
    assert paths.count("/v1/models/image_classifier") == 1  # status: background, not per request


def test_over_tf_serving_bad_pixels_get_422_and_an_unloaded_version_503(over_tf_serving):
    push_dir, url, _ = over_tf_serving
    response = httpx.post(f"{url}/v1/models/image_classifier:classify", content=_png(32)[:60],
                          headers=_headers("http-bad"))
    assert (response.status_code, response.json()["reason"]) == (422, "undecodable")
    set_labels(push_dir, Labels(1, 2, 0.0), "canary")
    response = httpx.post(f"{url}/v1/models/image_classifier/labels/canary:classify",
                          content=_png(), headers=_headers("http-canary"))
    assert (response.status_code, response.json()["reason"]) == (503, "unavailable")
    assert response.headers["Retry-After"] == "5"


def test_concurrent_requests_share_a_backend_call_and_a_bad_image_fails_alone(pushed):
    import asyncio

    from serving.backends import BadImage, Batcher
    backend = LocalBackend(pushed.push_dir)
    calls = []

    class Counting(LocalBackend):  # the real backend, with its calls recorded
        def classify(self, images, version):
            calls.append(len(images))
            return super().classify(images, version)

    counting = Counting(pushed.push_dir)

    async def together(images):
        batcher = Batcher(counting, max_batch=32, window=0.05)
        return await asyncio.gather(*(batcher.classify([image], 1) for image in images),
                                    return_exceptions=True)

    good = [_png(8 + i) for i in range(7)]
    results = asyncio.run(together(good))
    assert calls == [7]
    alone = [backend.classify([image], 1)[0][0] for image in good]
    # float32: a batch of 7 and a batch of 1 may round differently (1e-6 of 0.45 seen)
    assert [r[0][0] for r in results] == [pytest.approx(a, rel=1e-5, abs=1e-6) for a in alone]
    calls.clear()
    results = asyncio.run(together(good[:3] + [_png(32)[:60]] + good[3:]))
    assert isinstance(results[3], BadImage) and "does not decode" in str(results[3])
    assert all(not isinstance(r, Exception) for i, r in enumerate(results) if i != 3)
    # The batch, then halves until the bad image is alone: 8, 4 + 4, 2 + 2, 1 + 1.
    assert sorted(calls, reverse=True) == [8, 4, 4, 2, 2, 1, 1]


def test_rs256_tokens_verify_against_a_public_key_and_hs256_ones_forged_with_it_do_not(
        pushed):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    config = GatewayConfig(jwt_key=public)
    app = create_app(config, Router(pushed.push_dir, LocalBackend(pushed.push_dir)),
                     Answers(os.path.join(pushed.push_dir, "feedback")))
    claims = {"sub": "rsa", "exp": time.time() + 60}
    for url in serve(app):
        def call(token):
            return httpx.post(f"{url}/v1/models/image_classifier:classify", content=_png(),
                              headers={"Content-Type": "image/png",
                                       "Authorization": f"Bearer {token}"})
        assert call(jwt.encode(claims, private, "RS256")).status_code == 200
        # Algorithm confusion: an HMAC token "signed" with the public key as its secret.
        import hmac, hashlib  # noqa: E401
        head = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
        mac = hmac.new(public.encode(), head + b"." + body, hashlib.sha256).digest()
        forged = b".".join([head, body, base64.urlsafe_b64encode(mac).rstrip(b"=")]).decode()
        response = call(forged)
        assert (response.status_code, response.json()["reason"]) == (401, "invalid_token")


def test_the_model_card_shows_the_served_version_with_per_class_figures_and_its_report(server):
    assert httpx.get(f"{server}/model-card").status_code == 401  # behind the same token
    card = httpx.get(f"{server}/model-card",
                     headers={"Authorization": f"Bearer {_token(sub='card')}"})
    assert card.status_code == 200 and "default-src 'none'" in card.headers[
        "content-security-policy"]
    assert "stable: version 1" in card.text and "this version recall" in card.text
    assert 'href="/model-card"' in httpx.get(server).text  # beside the try-it page
    assert "<th>classes</th><td>0, 1, 2, 3, 4, 5, 6, 7, 8, 9</td>" in card.text
    bearer = {"Authorization": f"Bearer {_token(sub='report')}"}
    report = httpx.get(f"{server}/model-card/report/stable", headers=bearer)
    assert report.status_code == 200 and "Errors you can see" in report.text
    assert httpx.get(f"{server}/model-card/report/canary", headers=bearer).status_code == 404
