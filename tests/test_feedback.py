"""Feedback shared by gateway replicas and the promotion test: signed answer ids, one log for
every process (real gateway processes), and a fixed-horizon non-inferiority test whose error
rate holds however often it is looked at."""
from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import sys
import time

import httpx
import jwt
import numpy as np
import pytest

from components import serving_dir
from serving.feedback import Answers, BadFeedback, UnknownRequest, compare, read_feedback
from tests.conftest import ROOT, encode


def _entries(version: int, correct: int, total: int, start: float = 100.0, label="stable",
             subject=None) -> list[dict]:
    return [{"version": version, "label": label, "correct": i < correct,
             "answered": start + i, "subject": subject or f"client-{i}"} for i in range(total)]


def test_the_non_inferiority_test_matches_the_hand_computed_numbers():
    """800/1000 against 780/1000 with a 0.05 margin: the Agresti-Caffo standard error is
    sqrt(801*201 + 781*221) / 1002^1.5 = 0.01821, z = (-0.02 + 0.05) / 0.01821 = 1.647."""
    entries = _entries(1, 800, 1000) + _entries(2, 780, 1000, label="canary")
    result = compare(entries, 1, 2, margin=0.05, sample_size=1000, max_per_subject=1000)
    assert (result.stable.accuracy, result.canary.accuracy) == (0.8, 0.78)
    assert result.z == pytest.approx(1.647, abs=1e-3)
    assert result.p_value == pytest.approx(0.0498, abs=2e-4)
    assert result.verdict(alpha=0.05) == ""
    assert "non-inferiority not shown" in result.verdict(alpha=0.01)
    tighter = compare(entries, 1, 2, margin=0.01, sample_size=1000, max_per_subject=1000)
    assert "non-inferiority not shown" in tighter.verdict(alpha=0.05)
    # An equally good canary can be promoted (a superiority test would never allow it).
    same = compare(_entries(1, 900, 1000) + _entries(2, 900, 1000, label="canary"), 1, 2,
                   margin=0.05, sample_size=1000, max_per_subject=1000)
    assert same.verdict(alpha=0.05) == ""


def test_only_labelled_answers_since_the_canary_count_and_no_subject_decides_alone():
    entries = (_entries(1, 0, 50, start=0.0)  # before the canary took effect
               + _entries(2, 0, 50, start=200.0, label="")  # asked by version number
               + _entries(3, 50, 50, start=200.0, label="canary")  # another version
               + _entries(2, 50, 50, start=200.0, label="canary", subject="one-client")
               + _entries(1, 10, 10, start=200.0))
    result = compare(entries, 1, 2, since=100.0, sample_size=10, max_per_subject=5)
    assert (result.stable.total, result.canary.total, result.canary.correct) == (10, 5, 5)
    assert "not enough feedback: version 2 has 5 of the 10" in result.verdict(0.05)


def test_looking_again_never_changes_a_decision_and_the_error_rate_holds():
    """A canary exactly ``margin`` worse (the null hypothesis at its boundary): over 1,000
    simulated trials the test promotes it in about ``alpha`` of them, and a trial's decision
    is the same at the planned sample and after five times more feedback (fixed horizon)."""
    rng = np.random.default_rng(0)
    promoted, n, margin, trials = 0, 100, 0.05, 1000
    for _ in range(trials):
        stable = rng.random(5 * n) < 0.85
        canary = rng.random(5 * n) < 0.85 - margin
        entries = [{"version": 1, "label": "stable", "correct": bool(c), "answered": i,
                    "subject": str(i)} for i, c in enumerate(stable)]
        entries += [{"version": 2, "label": "canary", "correct": bool(c), "answered": i,
                     "subject": str(i)} for i, c in enumerate(canary)]
        looks = [compare([e for e in entries if e["answered"] < k], 1, 2, margin=margin,
                         sample_size=n).verdict(0.05) == "" for k in (n, 2 * n, 5 * n)]
        assert len(set(looks)) == 1
        promoted += looks[0]
    assert 0.03 < promoted / trials < 0.07


def test_answer_ids_are_signed_taken_once_and_name_a_class_of_the_model(tmp_path):
    first, second = Answers(str(tmp_path / "fb")), Answers(str(tmp_path / "fb"))  # replicas
    request_id = first.issue("canary", 2, "cat", ["cat", "dog"])
    assert second.record(request_id, "dog", "sub:grader")["correct"] is False
    with pytest.raises(UnknownRequest, match="already has feedback"):
        first.record(request_id, "dog", "sub:grader")
    payload, _, signature = request_id.partition(".")
    forged = first.issue("canary", 2, "dog", ["cat", "dog"]).split(".")[0] + "." + signature
    with pytest.raises(UnknownRequest, match="not issued"):
        second.record(forged, "dog")
    other = first.issue("stable", 1, "cat", ["cat", "dog"])
    with pytest.raises(BadFeedback, match="'cow' is not one of version 1's classes"):
        first.record(other, "cow")
    with open(first.path, "ab") as log:
        log.write(b'{"torn": ')  # a gateway killed mid-write
    assert first.record(other, "cat", "sub:grader")["correct"] is True
    assert [e["version"] for e in read_feedback(str(tmp_path / "fb"))] == [2, 1]


def _tiny_model(path: str, classes: list[str]) -> None:
    """A SavedModel with the gateway's raw-bytes signature: the class is the byte count
    modulo the number of classes."""
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


def _gateway(serving: str, feedback: str, key_file: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "serving", "--serving-dir", serving,
                                "--feedback-dir", feedback, "--port", str(port),
                                "--jwt-key-file", key_file, "--rate", "1000", "--burst",
                                "1000"], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.time() < deadline, process.stderr.read()
        time.sleep(0.2)


def test_two_gateway_processes_share_feedback_once_per_answer(tmp_path):
    """Answers from one gateway get feedback through the other, concurrently; a duplicate,
    a forged id, a class the model lacks and a token without the feedback scope are refused;
    nothing is lost: ``compare`` counts every accepted feedback."""
    key = "k" * 32
    (tmp_path / "jwt").write_text(key)
    push_dir = str(tmp_path / "serving" / "image_classifier")
    for version in (1, 2):
        _tiny_model(str(tmp_path / f"m{version}"), ["a", "b", "c"])
        serving_dir.publish(str(tmp_path / f"m{version}"), push_dir,
                            {"action": "push", "class_names": ["a", "b", "c"]}, keep=5)
    serving_dir.set_labels(push_dir, serving_dir.Labels(1, 2, 0.5), "canary")
    feedback = str(tmp_path / "feedback")
    gateways = [_gateway(str(tmp_path / "serving"), feedback, str(tmp_path / "jwt"))
                for _ in range(2)]
    try:
        def token(**claims):
            return {"Authorization": "Bearer " + jwt.encode(
                {"sub": "grader", "exp": time.time() + 60, **claims}, key, "HS256")}
        rng = np.random.default_rng(0)
        images = [encode(rng.integers(0, 256, (8, 8), np.uint8), "PNG") for _ in range(40)]
        answers = [httpx.post(f"{gateways[i % 2][1]}/v1/models/image_classifier:classify",
                              content=image, headers={"Content-Type": "image/png", **token()}
                              ).json() for i, image in enumerate(images)]

        def give(i: int) -> int:  # feedback through the gateway that did not answer
            return httpx.post(f"{gateways[(i + 1) % 2][1]}/v1/models/image_classifier:feedback",
                              json={"request_id": answers[i]["request_id"], "class": "a"},
                              headers=token(scope="read feedback")).status_code
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert list(pool.map(give, range(40))) == [200] * 40
        url = gateways[0][1]
        refused = [httpx.post(f"{url}/v1/models/image_classifier:feedback", json=body,
                              headers=token(**claims)).json()["reason"] for body, claims in [
            ({"request_id": answers[0]["request_id"], "class": "a"}, {"scope": "feedback"}),
            ({"request_id": answers[1]["request_id"][:-4] + "AAAA", "class": "a"},
             {"scope": "feedback"}),
            ({"request_id": answers[1]["request_id"], "class": "zebra"}, {"scope": "feedback"}),
            ({"request_id": answers[1]["request_id"], "class": "a"}, {})]]
        assert refused == ["unknown_request", "unknown_request", "unknown_class",
                           "no_feedback_scope"]
    finally:
        for process, _ in gateways:
            process.kill()
            process.wait()
    entries = read_feedback(feedback)
    assert sorted(e["request_id"] for e in entries) == sorted(a["request_id"] for a in answers)
    assert {e["subject"] for e in entries} == {"sub:grader"}
    by_version = {v: sum(e["version"] == v for e in entries) for v in (1, 2)}
    assert by_version[1] + by_version[2] == 40 and min(by_version.values()) > 5
