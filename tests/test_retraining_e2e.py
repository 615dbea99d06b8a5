"""Scheduled retraining over spans: only blessed models are ever pushed.

span-1 (good) -> v1 pushed; span-2 (labels shuffled: a worse model) -> not blessed, v1 still
the highest and byte-identical; rerun with no new span -> nothing pushed; span-3 (good) ->
v2 pushed, gated against v1 as baseline. Rollback to v1 (served as v3) -> the next run's
baseline is v3, v1's model, and the rolled-back model is not pushed again.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import os
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata.proto import metadata_store_pb2

from domain import registry
from ops import retrain, rollback
from pipeline.config import PipelineConfig
from pipeline.default_data import digits_examples
from domain.mlmd_queries import latest_artifact, metadata_store
from tests.conftest import ROOT
from tests.helpers import states as _states

FLAGS = ["--spans", "true", "--train-steps", "150", "--epochs", "3", "--eval-steps", "5",
         "--min-accuracy", "0.8", "--max-regression", "0.05"]


def _write_span(root, span: int, shuffle_labels: bool) -> None:
    rng = np.random.default_rng(span)
    writers = {s: tf.io.TFRecordWriter(os.path.join(root, f"span-{span}", s, "data.tfrecord"))
               for s in ("train", "eval") if os.makedirs(os.path.join(root, f"span-{span}", s))
               is None}
    for split, record in digits_examples():
        if shuffle_labels:
            example = tf.train.Example.FromString(record)
            example.features.feature["label"].int64_list.value[0] = int(rng.integers(0, 10))
            record = example.SerializeToString()
        writers[split].write(record)
    for writer in writers.values():
        writer.close()


def _snapshot(base):
    return {f: hashlib.sha256(open(f, "rb").read()).hexdigest()
            for f in glob.glob(os.path.join(base, "[0-9]*", "**"), recursive=True)
            if os.path.isfile(f)}


class Cycle:
    """The retraining history every test here checks, one stage after another. A test asks
    for the stage it needs (``reach``), which runs every earlier stage first, once: a test
    run alone runs its history and fails loudly if any of it fails, never skips."""

    STAGES = ("spans", "rollback", "warm_start", "rollback_mid_run")

    def __init__(self, root):
        self.data, work = str(root / "data"), str(root / "work")
        self.config = PipelineConfig.from_args(["--data-root", self.data, "--work-dir", work]
                                               + FLAGS, {})
        self.results: dict[str, dict] = {}

    def retrain(self, *extra: str) -> tuple[int, str]:
        """``ops.retrain`` on the cycle's data; its exit code and what it printed."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = retrain.main(["--data-root", self.data, "--work-dir", self.config.work_dir,
                                 *extra] + FLAGS)
        return code, out.getvalue()

    def last_execution(self) -> int:
        return max(e.id for e in metadata_store(self.config.metadata_path).get_executions())

    def states_since(self, execution_id: int) -> set:
        store = metadata_store(self.config.metadata_path)
        return {e.last_known_state for e in store.get_executions()
                if e.id > execution_id}

    def reach(self, stage: str) -> dict:
        for name in self.STAGES[:self.STAGES.index(stage) + 1]:
            if name not in self.results:
                self.results[name] = {"failed": True}  # an exception leaves it so
                self.results[name] = getattr(self, name)()
            assert not self.results[name].get("failed"), f"the stage {name!r} failed earlier"
        return self.results[stage]

    def spans(self) -> dict:
        """span-1 -> v1; span-2 (shuffled labels) -> not blessed; no new span -> cached;
        span-3 -> v2."""
        base, r = self.config.push_dir, {}
        _write_span(self.data, 1, shuffle_labels=False)
        r["first"] = self.retrain()
        r["v1"], r["versions_1"] = _snapshot(base), registry.versions(base)
        _write_span(self.data, 2, shuffle_labels=True)
        r["shuffled"] = self.retrain()
        r["after_shuffled"] = (registry.versions(base), _snapshot(base))
        last = self.last_execution()
        r["unchanged"] = self.retrain()
        r["unchanged_states"], r["after_unchanged"] = self.states_since(last), _snapshot(base)
        _write_span(self.data, 3, shuffle_labels=False)
        r["third"] = self.retrain()
        r["versions_3"] = registry.versions(base)
        return r

    def rollback(self) -> dict:
        """Roll back to v1 (served as v3), then a run: its baseline is v1's model."""
        r = {"v1_model": registry.read_manifest(self.config.push_dir)[0]["model_id"]}
        r["rollback"] = rollback.main(["--push-dir", self.config.push_dir, "--to-version", "1",
                                       "--reason", "v2 misbehaves"])
        r["versions"] = registry.versions(self.config.push_dir)
        r["run"] = self.retrain()
        r["after_run"] = registry.versions(self.config.push_dir)
        return r

    def warm_start(self) -> dict:
        """span-4 warm-started -> v4; the identical rerun is all cache hits."""
        _write_span(self.data, 4, shuffle_labels=False)
        r = {"run": self.retrain("--warm-start", "true"),
             "version": registry.versions(self.config.push_dir)[-1]}
        last = self.last_execution()
        r["rerun"] = self.retrain("--warm-start", "true")
        r["rerun_states"] = self.states_since(last)
        return r

    def rollback_mid_run(self) -> dict:
        """A rollback to v2 while a real ``ops.retrain`` process trains on span-5."""
        import sys
        import time

        config = self.config
        _write_span(self.data, 5, shuffle_labels=False)
        trainers = len(_states(config).get("Trainer", []))
        process = subprocess.Popen([sys.executable, "-m", "ops.retrain", "--data-root",
                                    self.data, "--work-dir", config.work_dir] + FLAGS, cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 600
        while len(_states(config).get("Trainer", [])) == trainers:
            assert process.poll() is None and time.time() < deadline, process.communicate()
            time.sleep(0.2)
        code = rollback.main(["--push-dir", config.push_dir, "--to-version", "2",
                              "--reason", "v4 misbehaves"])
        out, err = process.communicate(timeout=900)
        return {"rollback": code, "run": (process.returncode, out, err)}


@pytest.fixture(scope="module")
def cycle(tmp_path_factory):
    return Cycle(tmp_path_factory.mktemp("retrain"))


def test_only_blessed_models_are_pushed_across_spans(cycle):
    r, config = cycle.reach("spans"), cycle.config
    code, out = r["first"]
    assert code == 0 and "RETRAIN STATUS: pushed" in out
    assert r["versions_1"] == [1]
    code, out = r["shuffled"]
    assert code == 2 and "RETRAIN STATUS: not_blessed" in out and "Model NOT blessed" in out
    assert r["after_shuffled"] == ([1], r["v1"])
    code, out = r["unchanged"]  # no new span
    assert code == 0 and "RETRAIN STATUS: unchanged" in out
    assert r["unchanged_states"] == {metadata_store_pb2.Execution.CACHED}  # observers too
    assert r["after_unchanged"] == r["v1"]
    code, out = r["third"]
    assert code == 0 and "RETRAIN STATUS: pushed" in out and ">= served version 1's" in out
    assert r["versions_3"] == [1, 2]
    manifest = registry.read_manifest(config.push_dir)
    assert [(e["version"], e["spans"]) for e in manifest] == [(1, [1]), (2, [3])]
    assert manifest[0]["baseline_model_id"] is None
    assert manifest[1]["baseline_model_id"] == manifest[0]["model_id"]
    assert manifest[1]["accuracy"] >= 0.8

    # Lineage: what produced each version, and what each span fed.
    from ops import lineage
    v2 = lineage.version_lineage(config, 2)
    assert v2["spans"] == [3]
    trainer = v2["model"]["produced_by"]
    assert trainer["component"] == "Trainer"
    assert trainer["properties"]["run_fn"] == "modules.trainer.run_fn"
    assert json.loads(trainer["properties"]["custom_config"])["code_version"]
    assert {"examples", "transform_graph", "schema"} <= set(v2["model"]["inputs"])
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    summary = lineage.version_summary(v2).splitlines()
    assert summary[0].startswith("version 2, pushed ") and len(summary) == 9
    assert summary[1].startswith("  data       span 3: train ") and "fingerprint" in summary[1]
    assert summary[4].startswith(f"  code       git {commit[:12]}") and "modules sha256" in \
        summary[4]
    assert summary[6].startswith("  input      Input ") and "10 classes" in summary[6]
    assert "blessed; baseline: served version 1" in summary[7]
    assert "10 classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)," in summary[5]  # the class map's names
    assert lineage.version_lineage(config, 1)["spans"] == [1]
    fed = {s: lineage.span_lineage(config, s)["models"] for s in (1, 2, 3)}
    assert [m["pushed_as"] for m in fed[1]] == [[1]]
    assert [m["pushed_as"] for m in fed[2]] == [[]]  # trained, not blessed, never served
    assert [m["pushed_as"] for m in fed[3]] == [[2]]
    runs = lineage.Lineage(metadata_store(config.metadata_path)).runs()
    assert [run["pushed_version"] for run in runs] == [1, None, None, 2]
    assert v2["run"] == runs[3]["run"] and lineage.version_lineage(config, 1)["run"] == \
        runs[0]["run"]


def test_after_a_rollback_the_baseline_is_the_rolled_back_version(cycle):
    r = cycle.reach("rollback")
    assert r["rollback"] == 0 and r["versions"] == [1, 2, 3]
    code, out = r["run"]
    assert code == 0 and "served version 3's" in out and "RETRAIN STATUS: unchanged" in out
    assert "already pushed as version 2" in out
    store = metadata_store(cycle.config.metadata_path)  # the rollback stage's run is the latest
    baseline = latest_artifact(store, "Model", "ServedModel")
    assert baseline.custom_properties["served_version"].int_value == 3
    assert baseline.custom_properties["source_model_id"].int_value == r["v1_model"]
    blessing = latest_artifact(store, "ModelBlessing")
    assert blessing.custom_properties["baseline_model_id"].int_value == baseline.id
    assert r["after_run"] == [1, 2, 3]  # the rollback sticks


def test_a_warm_started_retrain_pushes_new_data_only(cycle):
    r = cycle.reach("warm_start")
    code, out = r["run"]
    assert code == 0 and "Warm start: initialised from" in out
    assert "RETRAIN STATUS: pushed" in out and r["version"] == 4
    # v4 is served now and came from this very run: the rerun is all cache hits (the warm
    # start from v4 is not retried).
    code, out = r["rerun"]
    assert code == 0 and "already pushed as version 4" in out
    assert "every component served from cache" in out and "RETRAIN STATUS: unchanged" in out
    assert r["rerun_states"] == {metadata_store_pb2.Execution.CACHED}


def test_a_rollback_while_a_run_trains_is_not_undone(cycle):
    """An operator rolls back while a scheduled run trains on a new span (a real process):
    the run was gated against the version served when it started, so it pushes nothing and
    says why; the rollback stays served."""
    r, config = cycle.reach("rollback_mid_run"), cycle.config
    code, out, err = r["run"]
    assert r["rollback"] == 0 and code == 0, err
    assert "served version changed since evaluation: gated against 4, now 5" in out
    assert "RETRAIN STATUS: superseded" in out
    assert registry.versions(config.push_dir)[-1] == 5
    assert registry.served_version(config.push_dir) == 5
    assert registry.read_manifest(config.push_dir)[-1]["action"] == "rollback"
