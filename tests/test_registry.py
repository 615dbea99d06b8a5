"""Atomic versioned publishing, retention, interrupted pushes and rollback."""
from __future__ import annotations

import filecmp
import json
import os

import pytest

from domain import labels, registry, versions
from domain.labels import LABELS, MODELS_CONFIG, Labels, read_labels, read_pending, set_labels
from ops import rollback


def _model(tmp_path, name: str) -> str:
    path = tmp_path / "models" / name
    (path / "variables").mkdir(parents=True, exist_ok=True)
    (path / "saved_model.pb").write_text(f"graph of {name}")
    (path / "variables" / "variables.data").write_text(f"weights of {name}" * 1000)
    return str(path)


def _same(a: str, b: str) -> bool:
    """Same files, but for the push record that publishing adds (in ``assets.extra``)."""
    comparison = filecmp.dircmp(a, b, ignore=["assets.extra"])
    return (not comparison.diff_files and not comparison.left_only and not comparison.right_only
            and all(_same(os.path.join(a, d), os.path.join(b, d)) for d in comparison.subdirs))


def test_versions_increase_and_retention_keeps_the_newest(tmp_path):
    base = str(tmp_path / "serving" / "m")
    for i in range(1, 5):
        assert registry.publish(_model(tmp_path, f"m{i}"), base, {"action": "push",
                                                                     "n": i}, keep=2) == i
    assert registry.versions(base) == [3, 4]
    assert _same(os.path.join(base, "4"), str(tmp_path / "models" / "m4"))
    manifest = registry.read_manifest(base)
    assert [(e["version"], e["n"], e["retained"]) for e in manifest] == [
        (1, 1, False), (2, 2, False), (3, 3, True), (4, 4, True)]
    assert all(e["time"].endswith("Z") for e in manifest)


def test_a_push_killed_before_the_rename_leaves_no_visible_version(tmp_path):
    base = str(tmp_path / "serving" / "m")
    registry.publish(_model(tmp_path, "good"), base, {"action": "push"}, keep=5)

    def die(staging):
        assert os.listdir(staging)  # the copy is complete, only the rename is missing
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        registry.publish(_model(tmp_path, "next"), base, {"action": "push"}, keep=5,
                            before_rename=die)
    assert registry.versions(base) == [1]
    assert len(registry.read_manifest(base)) == 1
    assert [n for n in os.listdir(base) if n.startswith(registry.STAGING_PREFIX)]
    assert registry.publish(_model(tmp_path, "next"), base, {"action": "push"}, keep=5) == 2
    assert not [n for n in os.listdir(base) if n.startswith(registry.STAGING_PREFIX)]
    assert _same(os.path.join(base, "2"), str(tmp_path / "models" / "next"))


def test_versions_never_reuse_a_number_even_if_folders_were_deleted(tmp_path):
    base = str(tmp_path / "serving" / "m")
    for name in ("a", "b"):
        registry.publish(_model(tmp_path, name), base, {"action": "push"}, keep=5)
    for version in ("1", "2"):
        os.rename(os.path.join(base, version), str(tmp_path / f"gone{version}"))
    assert registry.publish(_model(tmp_path, "c"), base, {"action": "push"}, keep=5) == 3


def test_rollback_command_republishes_an_earlier_version_as_the_highest(tmp_path, capsys):
    base = str(tmp_path / "serving" / "m")
    for name in ("good", "bad"):
        registry.publish(_model(tmp_path, name), base, {"action": "push", "model": name},
                            keep=5)
    assert rollback.main(["--push-dir", base, "--to-version", "1", "--reason",
                          "v2 misclassifies cats"]) == 0
    assert "re-published as version 3" in capsys.readouterr().out
    assert registry.versions(base) == [1, 2, 3]
    assert _same(os.path.join(base, "3"), os.path.join(base, "1"))
    last = registry.read_manifest(base)[-1]
    assert last["action"] == "rollback" and last["rollback_of"] == 1
    assert last["reason"] == "v2 misclassifies cats" and last["model"] == "good"


def test_rollback_to_a_missing_version_fails_clearly(tmp_path, capsys):
    base = str(tmp_path / "serving" / "m")
    registry.publish(_model(tmp_path, "a"), base, {"action": "push"}, keep=5)
    assert rollback.main(["--push-dir", base, "--to-version", "7", "--reason", "x"]) == 2
    assert "version 7 is not in" in capsys.readouterr().err
    assert registry.versions(base) == [1]


def test_labels_write_tf_servings_models_config_and_protect_their_versions(tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2
    base = str(tmp_path / "serving" / "image_classifier")
    for i in (1, 2):
        registry.publish(_model(tmp_path, f"m{i}"), base, {"action": "push"}, keep=2)

    def parsed():
        with open(os.path.join(base, MODELS_CONFIG)) as f:
            return text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())

    model = parsed().model_config_list.config[0]
    assert (model.name, model.base_path) == ("image_classifier", "/models/image_classifier")
    assert model.model_version_policy.latest.num_versions == 1 and not model.version_labels
    set_labels(base, Labels(1, 2, 0.1), "canary")
    model = parsed().model_config_list.config[0]
    assert list(model.model_version_policy.specific.versions) == [1, 2]
    assert dict(model.version_labels) == {"stable": 1, "canary": 2}
    assert oct(os.stat(os.path.join(base, MODELS_CONFIG)).st_mode & 0o777) == \
        "0o644"
    for i in (3, 4):  # keep=2 would prune 1 and 2, but both are labelled
        registry.publish(_model(tmp_path, f"m{i}"), base, {"action": "push"}, keep=2)
    assert registry.versions(base) == [1, 2, 3, 4]
    assert registry.served_version(base) == 1
    with pytest.raises(ValueError, match="served by labels|serves by labels"):
        registry.rollback(base, 1, "x", keep=2)


@pytest.mark.parametrize("labels, message", [
    (Labels(7), "stable version 7 is not in the serving dir"),
    (Labels(1, 9, 0.5), "canary version 9 is not in the serving dir"),
    (Labels(1, 1, 0.5), "canary and stable are both version 1"),
    (Labels(1, 2, 1.5), r"canary weight 1.5 is not in \[0, 1\]"),
    (Labels(1, 0, 0.5), "a canary weight needs a canary version"),
])
def test_impossible_labels_are_refused_and_change_nothing(tmp_path, labels, message):
    base = str(tmp_path / "m")
    for i in (1, 2):
        registry.publish(_model(tmp_path, f"m{i}"), base, {"action": "push"}, keep=5)
    with pytest.raises(ValueError, match=message):
        set_labels(base, labels, "test")
    assert read_labels(base) is None


KILLED_PUBLISHER = """
import os, signal, sys
from domain import registry
stage = sys.argv[3]
def die(*_):
    os.kill(os.getpid(), signal.SIGKILL)
if stage == "after_rename":
    registry.write_manifest = die
registry.publish(sys.argv[1], sys.argv[2], {"action": "push", "model_uri": "m2"}, keep=5,
                    before_rename=die if stage == "before_rename" else None)
"""


@pytest.mark.parametrize("stage", ["before_rename", "after_rename"])
def test_a_publisher_killed_at_any_point_leaves_a_state_the_next_push_repairs(tmp_path, stage):
    import subprocess
    import sys

    from tests.conftest import ROOT
    base = str(tmp_path / "serving" / "m")
    registry.publish(_model(tmp_path, "m1"), base, {"action": "push", "model_uri": "m1"},
                        keep=5)
    killed = subprocess.run([sys.executable, "-c", KILLED_PUBLISHER, _model(tmp_path, "m2"),
                             base, stage], cwd=ROOT)
    assert killed.returncode == -9
    numeric = [n for n in os.listdir(base) if n.isdigit()]
    for name in numeric:  # never a partial version
        assert os.path.exists(os.path.join(base, name, "saved_model.pb"))
        assert os.path.exists(os.path.join(base, name, "variables", "variables.data"))
    expected = [1] if stage == "before_rename" else [1, 2]
    assert registry.versions(base) == expected
    assert [e["model_uri"] for e in registry.read_manifest(base)] == ["m1", "m2"][
        :len(expected)]
    assert registry.publish(_model(tmp_path, "m3"), base, {"action": "push"}, keep=5) == \
        expected[-1] + 1
    assert not [n for n in os.listdir(base) if n.startswith(registry.STAGING_PREFIX)]
    with open(os.path.join(base, registry.MANIFEST)) as f:  # healed on disk too
        assert [e["version"] for e in json.load(f)] == expected + [expected[-1] + 1]
    assert oct(os.stat(os.path.join(base, registry.MANIFEST)).st_mode & 0o777) == "0o644"


def _waiters(base: str) -> int:
    """Processes blocked on ``base``'s lock (``/proc/locks`` lists them with ``->``)."""
    inode = os.stat(os.path.join(base, versions.LOCK)).st_ino
    with open("/proc/locks") as f:
        return sum(1 for line in f if "->" in line and f":{inode} " in line)


def _held_while_started(base: str, commands: list[list[str]], meanwhile=lambda: None) -> list:
    """Starts ``commands`` while this process holds ``base``'s lock; once every one of them
    waits for it (a read-decide-write that read outside the lock has read the old state),
    calls ``meanwhile`` and releases it; returns their ``CompletedProcess``es."""
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT
    with registry.locked(base):
        started = [subprocess.Popen([sys.executable, *c], cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for c in commands]
        deadline = time.time() + 120
        while _waiters(base) < len(started):
            assert time.time() < deadline and all(p.poll() is None for p in started), \
                [p.communicate() for p in started]
            time.sleep(0.05)
        meanwhile()
    outputs = [p.communicate(timeout=120) for p in started]
    return [subprocess.CompletedProcess(p.args, p.returncode, *out)
            for p, out in zip(started, outputs)]


OVERLAPPING_PUSH = """
import sys
from domain import registry
try:
    version = registry.publish(sys.argv[1], sys.argv[2], {"action": "push",
                                  "model_uri": sys.argv[1]}, keep=5, expected_served=1)
    print("pushed", version)
except registry.ServedChanged as err:
    print("refused:", err)
"""


def test_two_overlapping_pushes_gated_against_the_same_version_push_once(tmp_path):
    """Two runs' pushers (real processes) gated against version 1 reach the serving dir at
    the same moment: one pushes version 2, the other is refused and changes nothing."""
    base = str(tmp_path / "serving" / "m")
    registry.publish(_model(tmp_path, "m1"), base, {"action": "push"}, keep=5)
    runs = _held_while_started(base, [["-c", OVERLAPPING_PUSH, _model(tmp_path, name), base]
                                      for name in ("a", "b")])
    outputs = sorted(p.stdout.strip() for p in runs)
    assert [p.returncode for p in runs] == [0, 0]
    assert outputs[0] == "pushed 2"
    assert outputs[1] == ("refused: served version changed since evaluation: gated against 1, "
                          "now 2")
    assert registry.versions(base) == [1, 2]
    assert [e["version"] for e in registry.read_manifest(base)] == [1, 2]


def test_a_push_gated_before_a_rollback_is_refused_and_the_rollback_sticks(tmp_path):
    base = str(tmp_path / "serving" / "m")
    for name in ("m1", "m2"):
        registry.publish(_model(tmp_path, name), base, {"action": "push"}, keep=5)
    assert rollback.main(["--push-dir", base, "--to-version", "1", "--reason", "bad"]) == 0
    with pytest.raises(registry.ServedChanged, match="gated against 2, now 3"):
        registry.publish(_model(tmp_path, "m4"), base, {"action": "push"}, keep=5,
                            expected_served=2)
    assert registry.versions(base) == [1, 2, 3] and registry.served_version(base) == 3
    set_labels(base, Labels(1, 3, 0.5), "canary")
    with pytest.raises(registry.ServedChanged, match="gated against 3, now 1"):
        registry.publish(_model(tmp_path, "m4"), base, {"action": "push"}, keep=5,
                            expected_served=3)
    assert registry.publish(_model(tmp_path, "m4"), base, {"action": "push"}, keep=5,
                               expected_served=1) == 4


def test_a_promote_started_before_a_rollback_does_not_undo_it(tmp_path, capsys):
    """``ops.labels promote`` (a real process) starts, then ``rollback --to-version 3`` runs
    before it writes: the promote decides on the rolled-back state (no canary left) and
    changes nothing; one that decided on what it saw first would make version 2 stable."""
    from ops import labels as labels_command
    base = str(tmp_path / "serving" / "m")
    for i in (1, 2, 3):
        registry.publish(_model(tmp_path, f"m{i}"), base, {"action": "push"}, keep=5)
    set_labels(base, Labels(1, 2, 0.5), "canary")
    promote, = _held_while_started(
        base, [["-m", "ops.labels", "--push-dir", base, "promote"]],
        meanwhile=lambda: labels_command.main(["--push-dir", base, "rollback",
                                               "--to-version", "3"]))
    assert "stable: version 3" in capsys.readouterr().out
    assert promote.returncode == 2 and "no canary to promote" in promote.stderr
    assert read_labels(base) == Labels(3)


KILLED_LABELLER = """
import os, signal, sys
from domain import labels
real = labels.write
def write(base, name, text):
    if name == sys.argv[2]:
        os.kill(os.getpid(), signal.SIGKILL)
    real(base, name, text)
labels.write = write
labels.set_labels(sys.argv[1], labels.Labels(2, 3, 0.2), "canary")
"""


@pytest.mark.parametrize("killed_at", [LABELS, MODELS_CONFIG])
def test_a_label_change_killed_mid_write_leaves_a_servable_state_the_next_one_repairs(
        tmp_path, killed_at):
    import subprocess
    import sys

    from tests.conftest import ROOT
    base = str(tmp_path / "serving" / "m")
    for i in (1, 2, 3):
        registry.publish(_model(tmp_path, f"m{i}"), base, {"action": "push"}, keep=5)
    set_labels(base, Labels(1, 2, 0.1), "canary")
    killed = subprocess.run([sys.executable, "-c", KILLED_LABELLER, base, killed_at], cwd=ROOT)
    assert killed.returncode == -9
    assert read_labels(base) == Labels(1, 2, 0.1)  # still in effect
    registry.publish(_model(tmp_path, "m4"), base, {"action": "push"}, keep=1)
    # the labelled versions, in effect or pending, survive pruning
    assert registry.versions(base) == [1, 2, 3, 4] if killed_at == MODELS_CONFIG \
        else [1, 2, 4]
    set_labels(base, Labels(1), "rollback")
    assert read_pending(base) is None
    with open(os.path.join(base, MODELS_CONFIG)) as f:
        assert "versions: 1\n" in f.read()


def test_a_torn_manifest_is_rebuilt_from_the_versions_push_records(tmp_path):
    base = str(tmp_path / "serving" / "m")
    for i in (1, 2):
        registry.publish(_model(tmp_path, f"m{i}"), base, {"action": "push", "n": i},
                            keep=5)
    with open(os.path.join(base, registry.MANIFEST), "r+") as f:
        f.truncate(40)  # a crash on a filesystem that lost the unsynced tail
    assert [(e["version"], e["n"]) for e in registry.read_manifest(base)] == [(1, 1), (2, 2)]
    assert registry.publish(_model(tmp_path, "m3"), base, {"action": "push", "n": 3},
                               keep=5) == 3
    with open(os.path.join(base, registry.MANIFEST)) as f:
        assert [e["version"] for e in json.load(f)] == [1, 2, 3]


def test_the_invariant_check_names_what_is_wrong(tmp_path):
    base = str(tmp_path / "serving" / "m")
    for i in (1, 2):
        registry.publish(_model(tmp_path, f"m{i}"), base, {"action": "push"}, keep=5,
                            expected_served=i - 1)
    assert registry.check(base) == []
    os.rename(os.path.join(base, "1"), str(tmp_path / "gone"))
    os.makedirs(os.path.join(base, "3"))
    with open(os.path.join(base, LABELS), "w") as f:
        json.dump({"stable": 9, "canary": 0, "canary_weight": 0.0}, f)
    assert registry.check(base) == [
        "version 3 has no push record (partial)",
        "manifest.json retains [1, 2], folders are [2, 3]",
        "labels {'stable': 9} point to missing versions ([2, 3])",
        "models.config labels {} are not labels.json's {'stable': 9}"]


def test_versions_labelled_a_moment_ago_are_not_pruned_under_a_gateway(tmp_path, monkeypatch):
    """A gateway that read the labels just before they moved may still load the old
    versions: they stay for LABEL_GRACE_SECONDS after the move."""
    base = str(tmp_path / "serving" / "m")
    for i in (1, 2, 3):
        registry.publish(_model(tmp_path, f"m{i}"), base, {"action": "push"}, keep=5)
    set_labels(base, Labels(1, 2, 0.5), "canary")
    set_labels(base, Labels(3), "rollback")
    registry.publish(_model(tmp_path, "m4"), base, {"action": "push"}, keep=1)
    assert registry.versions(base) == [1, 2, 3, 4]
    monkeypatch.setattr(labels, "LABEL_GRACE_SECONDS", 0)
    registry.publish(_model(tmp_path, "m5"), base, {"action": "push"}, keep=1)
    assert registry.versions(base) == [3, 5]
