"""What an operator meets: user mistakes as one line with exit code 2, and runs that are safe
to start together and to kill (real processes, real SIGKILL, real MLMD).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import tensorflow as tf
from ml_metadata.proto import metadata_store_pb2

from domain import registry
from pipeline import local_runner
from pipeline.config import PipelineConfig
from domain.mlmd_queries import component_names, metadata_store
from domain.records import write_splits
from tests.conftest import ROOT
from tests.helpers import states as _states

SMALL = ["--train-steps", "60", "--eval-steps", "5", "--min-accuracy", "0.3"]


def _example(features: dict) -> bytes:
    def feature(value):
        if isinstance(value, bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    return tf.train.Example(features=tf.train.Features(
        feature={k: feature(v) for k, v in features.items()})).SerializeToString()


def _data(root, features: dict) -> str:
    write_splits(str(root), [(split, _example(features)) for split in ("train", "eval")])
    return str(root)


def _error(capsys, argv: list[str]) -> str:
    """Runs the local runner; returns its one error line after checking exit code 2."""
    with pytest.raises(SystemExit) as exit_:
        local_runner.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_missing_data_root_is_one_line_and_exit_2_from_the_command(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pipeline.local_runner", "--data-root",
                           str(tmp_path / "nowhere"), "--work-dir", str(tmp_path / "w")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"error: --data-root {tmp_path / 'nowhere'} is not a directory")


def test_user_mistakes_name_the_file_record_or_option(tmp_path, capsys):
    work = ["--work-dir", str(tmp_path / "w")]
    (tmp_path / "empty").mkdir()
    assert "no files match" in _error(capsys, ["--data-root", str(tmp_path / "empty")] + work)
    png = b"\x89PNG\r\n\x1a\n"  # the keys and labels are checked before any image
    keys = _data(tmp_path / "keys", {"img": png, "label": 1})
    line = _error(capsys, ["--data-root", keys] + work)
    assert "--image-key 'image' is not in the data" in line
    assert "has the features img, label" in line and "record 0" in line
    labels = _data(tmp_path / "labels", {"image": png, "label": 12})
    line = _error(capsys, ["--data-root", labels, "--num-classes", "10"] + work)
    assert "record 0: label 12 is outside [0, 10) (--num-classes 10)" in line
    (tmp_path / "not-records" / "train").mkdir(parents=True)
    (tmp_path / "not-records" / "train" / "a.tfrecord").write_text(
        "a text file, not TFRecords\n" * 4)
    line = _error(capsys, ["--data-root", str(tmp_path / "not-records")] + work)
    assert "is not a readable TFRecord file" in line and "a.tfrecord" in line
    # every file ImportExampleGen would read: a Finder dot file, and a stray file after the data
    good = _data(tmp_path / "good", {"image": png, "label": 1})
    for stray in (".DS_Store", "zz-notes.txt"):
        shutil.copytree(good, tmp_path / stray)
        (tmp_path / stray / "eval" / stray).write_bytes(b"\x00\x00\x00Bud1" * 8)
        line = _error(capsys, ["--data-root", str(tmp_path / stray)] + work)
        assert f"eval/{stray} is not a readable TFRecord file" in line
    line = _error(capsys, ["--data-root", good, "--distill-teacher", str(tmp_path / "v9")] + work)
    assert f"--distill-teacher {tmp_path / 'v9'}: neither a backbone[:width]" in line
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = _error(capsys, ["--data-root", labels, "--serving-dir", str(blocker / "serving")]
                  + work)
    assert f"--serving-dir {blocker / 'serving'}: {blocker} is not a writable directory" in line


def test_a_damaged_metadata_db_says_how_to_recover_keeping_the_served_models(tmp_path, capsys):
    config = PipelineConfig.from_args(["--work-dir", str(tmp_path)], environ={})
    os.makedirs(os.path.dirname(config.metadata_path))
    with sqlite3.connect(config.metadata_path) as db:  # a real db, then cut short
        db.execute("CREATE TABLE t (x TEXT)")
        db.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 200)
    size = os.path.getsize(config.metadata_path)
    with open(config.metadata_path, "r+b") as f:
        f.truncate(size // 2)
    line = _error(capsys, ["--work-dir", str(tmp_path)])
    assert f"metadata db {config.metadata_path} is unreadable" in line
    assert "served models in" in line and f"mv {config.metadata_path}" in line


def test_a_concurrent_writer_of_the_same_data_wins_cleanly(tmp_path):
    target = str(tmp_path / "data")

    def records():
        write_splits(target, [("train", b"theirs"), ("eval", b"theirs")])  # the other run
        yield "train", b"ours"

    with pytest.raises(FileExistsError):
        write_splits(target, records())
    assert sorted(os.listdir(target)) == ["eval", "train"]
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def _start(work: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.local_runner", "--work-dir", work,
                             *SMALL, *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _check_serving_consistent(config) -> list[int]:
    """No partial version, and the manifest lists exactly the version directories."""
    versions = registry.versions(config.push_dir)
    for version in versions:
        assert os.path.exists(os.path.join(config.push_dir, str(version), "saved_model.pb"))
        assert os.path.exists(os.path.join(config.push_dir, str(version), "variables",
                                           "variables.index"))
    with open(os.path.join(config.push_dir, registry.MANIFEST)) as f:
        listed = [e["version"] for e in json.load(f)]
    assert listed == versions and len(set(listed)) == len(listed)
    return versions


def test_runs_started_together_or_killed_leave_one_consistent_history(tmp_path):
    """Two first runs together on a fresh work dir: both finish, one version. A run killed
    (-9) in the Trainer: nothing visible changes, and the rerun completes and cleans up."""
    work = str(tmp_path / "w")
    config = PipelineConfig.from_args(["--work-dir", work], environ={})
    first, second = _start(work), _start(work)
    outputs = [p.communicate(timeout=900) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    assert sum("Another run holds the lock" in out for out, _ in outputs) == 1
    assert sum("Pushed version 1" in out for out, _ in outputs) == 1
    assert _check_serving_consistent(config) == [1]

    killed = _start(work, "--seed", "7")  # a changed option: the Trainer runs again
    deadline = time.time() + 600
    while metadata_store_pb2.Execution.RUNNING not in _states(config).get("Trainer", []):
        assert killed.poll() is None and time.time() < deadline, killed.communicate()
        time.sleep(0.5)
    time.sleep(2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert _check_serving_consistent(config) == [1]
    assert metadata_store_pb2.Execution.RUNNING in _states(config)["Trainer"]

    last = max(e.id for e in metadata_store(config.metadata_path).get_executions())
    rerun = _start(work, "--seed", "7")
    out, err = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, err
    versions = _check_serving_consistent(config)
    assert versions in ([1], [1, 2]) and ("Pushed version 2" in out) == (versions == [1, 2])
    states = _states(config)
    assert metadata_store_pb2.Execution.RUNNING not in sum(states.values(), [])
    # The killed run's changed option (a Trainer setting) reruns the Trainer and what depends
    # on it, nothing else.
    store = metadata_store(config.metadata_path)
    names = component_names(store)
    assert {names[e.type_id] for e in store.get_executions() if e.id > last and
            e.last_known_state == metadata_store_pb2.Execution.COMPLETE} == {
        "Trainer", "Evaluator", "VersionedPusher"}
    assert metadata_store_pb2.Execution.CANCELED in states["Trainer"]
