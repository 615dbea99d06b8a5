"""Atomic versioned publishing, retention, interrupted pushes and rollback."""
from __future__ import annotations

import filecmp
import os

import pytest

from components import serving_dir
from ops import rollback


def _model(tmp_path, name: str) -> str:
    path = tmp_path / "models" / name
    (path / "variables").mkdir(parents=True, exist_ok=True)
    (path / "saved_model.pb").write_text(f"graph of {name}")
    (path / "variables" / "variables.data").write_text(f"weights of {name}" * 1000)
    return str(path)


def _same(a: str, b: str) -> bool:
    comparison = filecmp.dircmp(a, b)
    return (not comparison.diff_files and not comparison.left_only and not comparison.right_only
            and all(_same(os.path.join(a, d), os.path.join(b, d)) for d in comparison.subdirs))


def test_versions_increase_and_retention_keeps_the_newest(tmp_path):
    base = str(tmp_path / "serving" / "m")
    for i in range(1, 5):
        assert serving_dir.publish(_model(tmp_path, f"m{i}"), base, {"action": "push",
                                                                     "n": i}, keep=2) == i
    assert serving_dir.versions(base) == [3, 4]
    assert _same(os.path.join(base, "4"), str(tmp_path / "models" / "m4"))
    manifest = serving_dir.read_manifest(base)
    assert [(e["version"], e["n"], e["retained"]) for e in manifest] == [
        (1, 1, False), (2, 2, False), (3, 3, True), (4, 4, True)]
    assert all(e["time"].endswith("Z") for e in manifest)


def test_a_push_killed_before_the_rename_leaves_no_visible_version(tmp_path):
    base = str(tmp_path / "serving" / "m")
    serving_dir.publish(_model(tmp_path, "good"), base, {"action": "push"}, keep=5)

    def die(staging):
        assert os.listdir(staging)  # the copy is complete, only the rename is missing
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        serving_dir.publish(_model(tmp_path, "next"), base, {"action": "push"}, keep=5,
                            before_rename=die)
    assert serving_dir.versions(base) == [1]
    assert len(serving_dir.read_manifest(base)) == 1
    assert [n for n in os.listdir(base) if n.startswith(serving_dir.STAGING_PREFIX)]
    assert serving_dir.publish(_model(tmp_path, "next"), base, {"action": "push"}, keep=5) == 2
    assert not [n for n in os.listdir(base) if n.startswith(serving_dir.STAGING_PREFIX)]
    assert _same(os.path.join(base, "2"), str(tmp_path / "models" / "next"))


def test_versions_never_reuse_a_number_even_if_folders_were_deleted(tmp_path):
    base = str(tmp_path / "serving" / "m")
    for name in ("a", "b"):
        serving_dir.publish(_model(tmp_path, name), base, {"action": "push"}, keep=5)
    for version in ("1", "2"):
        os.rename(os.path.join(base, version), str(tmp_path / f"gone{version}"))
    assert serving_dir.publish(_model(tmp_path, "c"), base, {"action": "push"}, keep=5) == 3


def test_rollback_command_republishes_an_earlier_version_as_the_highest(tmp_path, capsys):
    base = str(tmp_path / "serving" / "m")
    for name in ("good", "bad"):
        serving_dir.publish(_model(tmp_path, name), base, {"action": "push", "model": name},
                            keep=5)
    assert rollback.main(["--push-dir", base, "--to-version", "1", "--reason",
                          "v2 misclassifies cats"]) == 0
    assert "re-published as version 3" in capsys.readouterr().out
    assert serving_dir.versions(base) == [1, 2, 3]
    assert _same(os.path.join(base, "3"), os.path.join(base, "1"))
    last = serving_dir.read_manifest(base)[-1]
    assert last["action"] == "rollback" and last["rollback_of"] == 1
    assert last["reason"] == "v2 misclassifies cats" and last["model"] == "good"


def test_rollback_to_a_missing_version_fails_clearly(tmp_path, capsys):
    base = str(tmp_path / "serving" / "m")
    serving_dir.publish(_model(tmp_path, "a"), base, {"action": "push"}, keep=5)
    assert rollback.main(["--push-dir", base, "--to-version", "7", "--reason", "x"]) == 2
    assert "version 7 is not in" in capsys.readouterr().err
    assert serving_dir.versions(base) == [1]
