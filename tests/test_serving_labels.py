"""Labels against TF Serving's rules: a stand-in that follows ``models.config`` on a poll and
refuses labels for versions it has not loaded (tests/tf_serving_contract_server.py), a real
HTTP server; ``ops.labels`` in two phases, and the gateway's router following labels only
to versions the backend has available."""
from __future__ import annotations

import os
import threading
import time

import pytest
import tensorflow as tf

from domain import registry
from domain.labels import LABELS, Labels, MODELS_CONFIG, models_config, read_labels, read_pending
from ops import labels as labels_command
from serving.backends import HttpBackend
from serving.routing import Router
from tests.helpers import serve
from tests.tf_serving_contract_server import ConfigFollower, tf_serving_app


@pytest.fixture
def tf_serving(tmp_path):
    """Versions 1-3 of tiny SavedModels and a TF Serving stand-in polling every 0.3 s."""
    push_dir = str(tmp_path / "image_classifier")
    for i in range(3):
        tf.saved_model.save(tf.Module(), str(tmp_path / f"m{i}"))
        registry.publish(str(tmp_path / f"m{i}"), push_dir, {"action": "push"}, keep=5)
    follower, stop = ConfigFollower(push_dir), threading.Event()
    poller = threading.Thread(target=follower.follow, args=(0.3, stop), daemon=True)
    poller.start()
    deadline = time.time() + 30
    while sorted(follower.models) != [3]:  # models.config without labels: the highest
        assert time.time() < deadline, follower.errors
        time.sleep(0.05)
    for url in serve(tf_serving_app(push_dir, "image_classifier", None, [], follower)):
        yield push_dir, url, follower
    stop.set()
    poller.join(5)


def _followed(router: Router) -> dict[str, int]:
    """The labels the router follows once its backend re-read TF Serving's status (the
    gateway's background refresh)."""
    router.backend.refresh(set())
    return router.versions()


def test_labels_move_only_to_versions_tf_serving_has_loaded(tf_serving, capsys):
    push_dir, url, follower = tf_serving
    router = Router(push_dir, HttpBackend(url, "image_classifier"))
    assert _followed(router) == {"stable": 3}
    # Labels start: stable 2, canary 3. TF Serving must first load 2, unlabelled.
    assert labels_command.main(["--push-dir", push_dir, "--tf-serving", url, "canary",
                                "--version", "3", "--weight", "0.2"]) == 0
    assert "stable: version 2, canary: version 3" in capsys.readouterr().out
    assert read_pending(push_dir) is None
    deadline = time.time() + 10
    while follower.labels != {"stable": 2, "canary": 3}:
        assert time.time() < deadline, follower.errors
        time.sleep(0.05)
    assert _followed(router) == {"stable": 2, "canary": 3}
    # A rollback to version 1, which TF Serving unloaded: with too short a wait the labels
    # stay where they answer, the change waits; `settle` finishes it.
    assert labels_command.main(["--push-dir", push_dir, "--tf-serving", url, "--wait", "0",
                                "rollback", "--to-version", "1"]) == 1
    assert "has not loaded version(s) [1]" in capsys.readouterr().err
    assert read_labels(push_dir) == Labels(2, 3, 0.2)
    assert _followed(router) == {"stable": 2, "canary": 3}
    assert labels_command.main(["--push-dir", push_dir, "--tf-serving", url, "settle"]) == 0
    assert read_labels(push_dir) == Labels(1)
    deadline = time.time() + 10
    while follower.labels != {"stable": 1} or sorted(follower.models) != [1]:
        assert time.time() < deadline, follower.errors
        time.sleep(0.05)
    assert _followed(router) == {"stable": 1}
    assert follower.errors == []  # TF Serving accepted every config it was given


def test_a_one_step_label_change_is_refused_by_tf_serving_and_not_followed(tf_serving):
    """The negative control: labels written at once point to a version TF Serving has not
    loaded; it refuses that config (keeping the old labels), and the router keeps answering
    from the versions it has."""
    push_dir, url, follower = tf_serving
    router = Router(push_dir, HttpBackend(url, "image_classifier"))
    assert _followed(router) == {"stable": 3}
    with open(os.path.join(push_dir, MODELS_CONFIG), "w") as f:
        f.write(models_config("image_classifier", Labels(1)))
    with open(os.path.join(push_dir, LABELS), "w") as f:
        f.write('{"stable": 1, "canary": 0, "canary_weight": 0.0}')
    deadline = time.time() + 10
    while not follower.errors:
        assert time.time() < deadline
        time.sleep(0.05)
    assert "version 1 of model image_classifier, which is not currently available" in \
        follower.errors[0]
    assert _followed(router) == {"stable": 3} or 1 in follower.models
