"""Feedback shared by gateway replicas and the promotion test: signed answer ids, one log for
every process (real gateway processes), and a fixed-horizon non-inferiority test whose error
rate holds however often it is looked at."""
from __future__ import annotations

import concurrent.futures
import time

import httpx
import jwt
import numpy as np
import pytest

from domain import registry
from domain.labels import Labels, set_labels
from serving.feedback import Answers, BadFeedback, UnknownRequest, compare, read_feedback
from tests.conftest import encode
from tools import soak


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


@pytest.fixture(scope="module")
def two_gateways(tmp_path_factory):
    """Two gateway processes on one serving dir (versions 1 and 2 of a tiny model, stable 1
    and canary 2 at 50%) and one feedback dir."""
    root = tmp_path_factory.mktemp("replicas")
    key = "k" * 32
    (root / "jwt").write_text(key)
    push_dir = str(root / "serving" / "image_classifier")
    model = soak.tiny_model(str(root / "model"), ["a", "b", "c"], pad_megabytes=4)
    for _ in (1, 2):
        registry.publish(model, push_dir, {"action": "push", "class_names": ["a", "b", "c"]},
                            keep=5)
    set_labels(push_dir, Labels(1, 2, 0.5), "canary")
    feedback = str(root / "feedback")
    gateways = [soak.start_gateway(str(root / "serving"), feedback, str(root / "jwt"))
                for _ in range(2)]
    yield push_dir, model, feedback, key, [url for _, url in gateways]
    for process, _ in gateways:
        process.kill()
        process.wait()


def test_two_gateway_processes_share_feedback_once_per_answer(two_gateways):
    """Answers from one gateway get feedback through the other, concurrently; a duplicate,
    a forged id, a class the model lacks and a token without the feedback scope are refused;
    nothing is lost: the log holds every accepted feedback once."""
    _, _, feedback, key, urls = two_gateways

    def token(**claims):
        return {"Authorization": "Bearer " + jwt.encode(
            {"sub": "grader", "exp": time.time() + 60, **claims}, key, "HS256")}
    rng = np.random.default_rng(0)
    images = [encode(rng.integers(0, 256, (8, 8), np.uint8), "PNG") for _ in range(40)]
    answers = [httpx.post(f"{urls[i % 2]}/v1/models/image_classifier:classify",
                          content=image, headers={"Content-Type": "image/png", **token()}
                          ).json() for i, image in enumerate(images)]

    def give(i: int) -> int:  # feedback through the gateway that did not answer
        return httpx.post(f"{urls[(i + 1) % 2]}/v1/models/image_classifier:feedback",
                          json={"request_id": answers[i]["request_id"], "class": "a"},
                          headers=token(scope="read feedback")).status_code
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(give, range(40))) == [200] * 40
    refused = [httpx.post(f"{urls[0]}/v1/models/image_classifier:feedback", json=body,
                          headers=token(**claims)).json()["reason"] for body, claims in [
        ({"request_id": answers[0]["request_id"], "class": "a"}, {"scope": "feedback"}),
        ({"request_id": answers[1]["request_id"][:-4] + "AAAA", "class": "a"},
         {"scope": "feedback"}),
        ({"request_id": answers[1]["request_id"], "class": "zebra"}, {"scope": "feedback"}),
        ({"request_id": answers[1]["request_id"], "class": "a"}, {})]]
    assert refused == ["unknown_request", "unknown_request", "unknown_class",
                       "no_feedback_scope"]
    entries = read_feedback(feedback)
    assert sorted(e["request_id"] for e in entries) == sorted(a["request_id"] for a in answers)
    assert {e["subject"] for e in entries} == {"sub:grader"}
    by_version = {v: sum(e["version"] == v for e in entries) for v in (1, 2)}
    assert by_version[1] + by_version[2] == 40 and min(by_version.values()) > 5


def test_a_soak_of_the_seams_keeps_every_invariant(two_gateways):
    """For 12 s, real processes at once — pushes gated against what they saw served,
    canaries, promotions, rollbacks by label and by re-publishing, about two SIGKILLs a
    second — while both gateways answer and take each other's feedback: after the repair
    the next command does, every invariant of ``registry.check`` holds, every request is
    answered and no accepted feedback is lost or doubled."""
    push_dir, model, feedback, key, urls = two_gateways
    result = soak.soak(push_dir, model, seconds=12, parallel=4, kill_rate=2.0, seed=1,
                       gateways=tuple(urls), jwt_key=key, feedback_dir=feedback)
    assert result["violations"] == [], result
    outcomes, requests = result["outcomes"], result["requests"]
    assert result["kills"] >= 5 and outcomes.get("push: done", 0) >= 2, result
    assert outcomes.get("push: refused", 0) + outcomes.get("rollback: refused", 0) >= 1, result
    assert result["label changes"] >= 2, result
    assert set(requests) == {"classify 200", "feedback 200"} and \
        requests["classify 200"] == requests["feedback 200"] >= 20, result
