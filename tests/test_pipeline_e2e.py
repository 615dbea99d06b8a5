"""The whole pipeline with LocalDagRunner on the embedded digits data, in a temp dir.

The session's digits run (conftest's ``digits_run``: a first run with a short KerasTuner
search) is shared: then an identical rerun (all cached) and a rerun whose gate no model can
pass (exactly the baseline, the Evaluator and the pusher rerun, nothing is pushed, serving is
untouched).
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata.proto import metadata_store_pb2
from tensorflow_metadata.proto.v0 import schema_pb2

from domain.features import CLASS_IDS, PROBABILITIES, RAW_SIGNATURE
from domain import registry
from modules import provenance
from ops import predict, rollback
from pipeline import local_runner, rerun
from pipeline.config import PipelineConfig
from domain.mlmd_queries import component_names, latest_artifact, metadata_store
from tests.conftest import ROOT
from tests.helpers import DIGITS_FLAGS, HEAVY, PROBE, oversized

COMPONENTS = ("ImportExampleGen", "ImageValidator", "StatisticsGen", "SchemaGen",
              "ExampleValidator", "AnomalyGate", "Transform", "Tuner", "Trainer", "Evaluator",
              "VersionedPusher")
DATA_AND_TRAINING = COMPONENTS[:-2]
FAST = DIGITS_FLAGS


def _executions_by_component(config, after_id=0):
    store = metadata_store(config.metadata_path)
    types = component_names(store)
    return {types[e.type_id]: e for e in store.get_executions() if e.id > after_id}


def _serving_snapshot(config):
    files = sorted(glob.glob(os.path.join(config.push_dir, "**"), recursive=True))
    return {f: hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files if os.path.isfile(f)}


def _held_out_examples(config):
    files = sorted(glob.glob(os.path.join(config.default_data_root, "eval", "*")))
    records = [r.numpy() for r in tf.data.TFRecordDataset(files)]
    labels = [tf.train.Example.FromString(r).features.feature["label"].int64_list.value[0]
              for r in records]
    return records, np.array(labels)


@pytest.fixture
def first_run(digits_run):
    """The session's digits run: ``(config, outcome)``."""
    return digits_run


def test_every_component_succeeded_in_mlmd(first_run):
    config, _ = first_run
    executions = _executions_by_component(config)
    for component in COMPONENTS:
        assert component in executions, f"no {component} execution in MLMD"
        assert executions[component].last_known_state == metadata_store_pb2.Execution.COMPLETE


def test_the_outcome_names_the_class_of_lowest_recall(first_run):
    _, outcome = first_run
    assert outcome.weakest_class in [str(digit) for digit in range(10)]
    assert 0.0 <= outcome.weakest_recall <= outcome.accuracy + 1e-9


def test_schema_has_the_image_and_label_features(first_run):
    import tensorflow_data_validation as tfdv
    config, _ = first_run
    schema_artifact = latest_artifact(metadata_store(config.metadata_path), "Schema", "SchemaGen")
    schema = tfdv.load_schema_text(os.path.join(schema_artifact.uri, "schema.pbtxt"))
    kinds = {f.name: f.type for f in schema.feature}
    assert kinds == {"image": schema_pb2.BYTES, "label": schema_pb2.INT}


def test_blessed_model_is_pushed_and_serves_raw_examples(first_run):
    config, outcome = first_run
    assert outcome.blessed and outcome.pushed
    assert registry.versions(config.push_dir) == [1] and outcome.pushed_version == 1
    assert outcome.pushed_path == os.path.join(config.push_dir, "1")
    assert outcome.baseline_accuracy is None  # first run: absolute bound only
    model = tf.saved_model.load(outcome.pushed_path)
    records, labels = _held_out_examples(config)
    out = model.signatures["serving_default"](examples=tf.constant(records))
    accuracy = float(np.mean(out[CLASS_IDS].numpy() == labels))
    assert out[PROBABILITIES].shape == (len(records), config.num_classes)
    assert accuracy >= max(config.min_accuracy, 0.95)  # the default CNN's bar
    assert accuracy == pytest.approx(outcome.accuracy, abs=1e-6)


def _runs(config) -> list:
    """The MLMD run contexts, oldest first."""
    return sorted(metadata_store(config.metadata_path).get_contexts_by_type(rerun.RUN_CONTEXT),
                  key=lambda c: c.id)


def _run_outputs(store, run) -> tuple[list[int], list[int]]:
    """A run's execution states (by execution) and the artifacts they output."""
    executions = sorted(store.get_executions_by_context(run.id), key=lambda e: e.id)
    events = store.get_events_by_execution_ids([e.id for e in executions])
    return ([e.last_known_state for e in executions],
            sorted(e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT))


def test_an_identical_rerun_is_recorded_in_mlmd_without_importing_the_training_stack(
        first_run):
    """A fresh process: the rerun is found before TensorFlow, TFX, TFMA or Beam is imported,
    and MLMD records it as TFX records cache hits (a run context, one CACHED execution per
    component, the same output artifacts), with the outcome and a report."""
    config, outcome = first_run
    before = _serving_snapshot(config)
    done = subprocess.run([sys.executable, "-c", PROBE.format(
        module="pipeline.local_runner", heavy=HEAVY, args=["--work-dir", config.work_dir] + FAST)],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-2000:] + done.stderr
    assert "every component served from cache" in done.stdout
    assert "Nothing pushed (already pushed as version 1)" in done.stdout
    assert f"accuracy {outcome.accuracy:.4f}" in done.stdout
    lines = _progress_lines(done.stdout)
    assert all(lines[c].endswith(" s  cache hit") for c in COMPONENTS), lines
    store = metadata_store(config.metadata_path)
    first, second = _runs(config)[-2:]
    assert first.custom_properties[rerun.KEY].string_value == \
        second.custom_properties[rerun.KEY].string_value == rerun.identity(config).key
    (states, outputs), (replayed, replayed_outputs) = (_run_outputs(store, run)
                                                       for run in (second, first))
    assert set(states) == {metadata_store_pb2.Execution.CACHED}
    assert len(states) == len(replayed) and outputs == replayed_outputs
    report = done.stdout.split("Run report: ")[1].split("\n")[0]
    with open(report, encoding="utf-8") as f:
        text = f.read()
    assert f"Identical rerun (MLMD run {second.name}) of the run {first.name}" in text
    assert f"Pushed version 1: {outcome.pushed_path}" in text  # the report of that run
    assert _serving_snapshot(config) == before


def _progress_lines(out: str) -> dict[str, str]:
    return {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}


def test_an_identical_rerun_is_all_cache_hits_and_pushes_nothing(first_run, capsys):
    """The served version came from an identical run: every step is a cache hit, the
    Evaluator's too (no re-evaluation of the model against its own served copy)."""
    config, outcome = first_run
    before = _serving_snapshot(config)
    last_id = max(e.id for e in metadata_store(config.metadata_path).get_executions())
    assert local_runner.main(["--work-dir", config.work_dir] + FAST) == 0
    out, err = capsys.readouterr()
    assert "every component served from cache" in out
    assert "Nothing pushed (already pushed as version 1)" in out
    lines = _progress_lines(out)
    for component in COMPONENTS:  # one line per component, readable
        assert lines[component].endswith(" s  cache hit"), lines[component]
    log = out.split("Run log (the libraries' messages): ")[1].split("\n")[0]
    assert "WARNING" not in out + err and "Component Trainer is running." in open(log).read()
    rerun = _executions_by_component(config, last_id)
    assert {rerun[c].last_known_state for c in COMPONENTS} == {
        metadata_store_pb2.Execution.CACHED}
    assert _serving_snapshot(config) == before


def test_a_changed_gate_reruns_exactly_the_gate_and_pusher_and_pushes_nothing(
        first_run, capsys):
    config, _ = first_run
    before = _serving_snapshot(config)
    last_id = max(e.id for e in metadata_store(config.metadata_path).get_executions())
    assert local_runner.main(["--work-dir", config.work_dir, "--min-accuracy", "1.5"]
                             + FAST) == 0
    lines = _progress_lines(capsys.readouterr().out)
    assert "NOT blessed" in lines["Evaluator"]
    assert "not pushed: already pushed as version 1" in lines["VersionedPusher"]
    rerun = _executions_by_component(config, last_id)
    complete = {c for c, e in rerun.items()
                if e.last_known_state == metadata_store_pb2.Execution.COMPLETE}
    # The observers too: this run is not the one that pushed version 1, so its baseline is
    # version 1 itself (the identical rerun above was shown what that run saw).
    assert complete == {"ServedVersion", "ServedModel", "Evaluator", "VersionedPusher"}
    assert {rerun[c].last_known_state for c in set(COMPONENTS) - complete} == {
        metadata_store_pb2.Execution.CACHED}
    assert _serving_snapshot(config) == before
    # Back to the settings that pushed version 1: all cache hits again, and the outcome is
    # that run's (not the unblessed run's, which came later).
    last_id = max(e.id for e in metadata_store(config.metadata_path).get_executions())
    outcome = local_runner.run(config)
    assert outcome.cached and outcome.blessed and not outcome.pushed
    assert outcome.reason == "already pushed as version 1"
    assert {e.last_known_state for e in _executions_by_component(config, last_id).values()} == {
        metadata_store_pb2.Execution.CACHED}


def _png_images(records):
    return [tf.train.Example.FromString(r).features.feature["image"].bytes_list.value[0]
            for r in records]


def test_raw_bytes_signature_agrees_with_the_example_signature(first_run):
    config, outcome = first_run
    model = tf.saved_model.load(outcome.pushed_path)
    records, _ = _held_out_examples(config)
    by_example = model.signatures["serving_default"](examples=tf.constant(records))
    by_bytes = model.signatures[RAW_SIGNATURE](image_bytes=tf.constant(_png_images(records)))
    np.testing.assert_array_equal(by_bytes[CLASS_IDS].numpy(), by_example[CLASS_IDS].numpy())
    np.testing.assert_allclose(by_bytes[PROBABILITIES].numpy(),
                               by_example[PROBABILITIES].numpy(), atol=1e-5)
    names = by_bytes["class_names"].numpy().astype(str)
    assert names.tolist() == by_bytes[CLASS_IDS].numpy().astype(str).tolist()


def test_tflite_artifact_agrees_with_the_pushed_saved_model(first_run):
    from domain.exported import TFLITE_PATH
    from domain.features import ImageSpec
    from modules.preprocessing import decode_images
    config, outcome = first_run
    model = tf.saved_model.load(outcome.pushed_path)
    records, _ = _held_out_examples(config)
    images = _png_images(records)
    served = model.signatures[RAW_SIGNATURE](image_bytes=tf.constant(images))[CLASS_IDS].numpy()
    pixels = decode_images(tf.constant(images),
                           ImageSpec.from_custom_config(config.transform_config())).numpy()
    interpreter = tf.lite.Interpreter(
        model_path=os.path.join(outcome.pushed_path, TFLITE_PATH))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    lite = []
    for image in pixels:
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        lite.append(interpreter.get_tensor(out["index"])[0].argmax())
    assert np.mean(np.array(lite) == served) >= 0.95


def test_raw_bytes_signature_rejects_oversized_images(first_run):
    from tests.conftest import encode
    _, outcome = first_run
    model = tf.saved_model.load(outcome.pushed_path)
    huge = encode(np.zeros((8000, 7000), np.uint8), "PNG")  # 56 Mpx > default 50 Mpx
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_pixels=50000000"):
        model.signatures[RAW_SIGNATURE](image_bytes=tf.constant([huge]))


def test_predict_command_prints_top_k_classes(first_run, tmp_path, capsys):
    config, _ = first_run
    records, labels = _held_out_examples(config)
    paths = []
    for i, image in enumerate(_png_images(records[:3])):
        paths.append(tmp_path / f"digit{i}.png")
        paths[-1].write_bytes(image)
    assert predict.main(["--model", config.push_dir, "--top-k", "2"] + list(map(str, paths))) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line, path, label in zip(lines, paths, labels):
        assert line.startswith(f"{path}: ") and line.count("(") == 2
    top1 = [line.split(": ")[1].split(" ")[0] for line in lines]
    assert sum(t == str(l) for t, l in zip(top1, labels[:3])) >= 2


def _peak_rss_mb(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """Runs ``python -m`` ``argv`` in a child; its peak resident memory (MB) and result."""
    script = ("import resource, runpy, sys; sys.argv = sys.argv[1:]\n"
              "try:\n    runpy.run_module(sys.argv[0], run_name='__main__')\n"
              "finally:\n    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
              " file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True,
                          text=True, cwd=ROOT)
    return int(done.stderr.strip().splitlines()[-1]) / 1024, done


def test_predict_names_each_bad_file_in_one_line_goes_on_and_stays_small(first_run,
                                                                         tmp_path):
    config, _ = first_run
    records, _ = _held_out_examples(config)
    good = tmp_path / "digit.png"
    good.write_bytes(_png_images(records[:1])[0])
    bad = {"bomb.webp": oversized("WEBP VP8X"), "bomb.png": oversized("PNG"),
           "notes.txt": b"just text", "empty.png": b""}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    paths = [str(tmp_path / name) for name in bad] + [str(good), str(tmp_path / "missing.png")]
    quiet_mb, _ = _peak_rss_mb(["ops.predict", "--model", config.push_dir, str(good)])
    peak_mb, done = _peak_rss_mb(["ops.predict", "--model", config.push_dir, *paths])
    assert done.returncode == 2
    assert done.stdout.strip().startswith(f"{good}: ")
    errors = [line for line in done.stderr.splitlines() if line.startswith(str(tmp_path))]
    assert errors == [
        f"{tmp_path}/bomb.webp: 16383x16383 pixels declared in its header, more than "
        "max_pixels=50,000,000 (not decoded)",
        f"{tmp_path}/bomb.png: 30000x30000 pixels declared in its header, more than "
        "max_pixels=50,000,000 (not decoded)",
        f"{tmp_path}/notes.txt: not a JPEG, PNG, GIF, BMP or WebP image (it starts with "
        "b'just text')",
        f"{tmp_path}/empty.png: empty (0 bytes), not an image",
        f"{tmp_path}/missing.png: cannot read: No such file or directory"], done.stderr
    assert "Traceback" not in done.stderr
    assert peak_mb < quiet_mb + 150, (peak_mb, quiet_mb)  # a decoded bomb is 268+ MB


def test_per_class_recall_is_computed_and_can_gate(first_run):
    from components.gate import sliced_metric
    config, _ = first_run
    outcome = local_runner.run(dataclasses.replace(config, min_class_recall=1.0))
    assert outcome.accuracy < 1.0  # so some class is below a recall of 1.0
    assert not outcome.blessed and not outcome.pushed
    with open(outcome.report, encoding="utf-8") as f:
        assert "<td>classes under the recall bound</td>" in f.read()  # by name, in the report
    evaluation = max(metadata_store(config.metadata_path).get_artifacts_by_type("ModelEvaluation"),
                     key=lambda a: a.id)
    per_class = {k: v for k, v in sliced_metric(evaluation.uri).items() if k}
    assert sorted(per_class) == [(("label", i),) for i in range(10)]
    assert min(per_class.values()) < 1.0


def test_tuner_best_hyperparameters_are_what_the_pushed_model_was_trained_with(first_run):
    import json

    import keras_tuner

    from modules.trainer import TUNED
    config, outcome = first_run
    store = metadata_store(config.metadata_path)
    best = latest_artifact(store, "HyperParameters", "Tuner")
    with open(os.path.join(best.uri, "best_hyperparameters.txt")) as f:
        values = keras_tuner.HyperParameters.from_config(json.load(f)).values
    with open(os.path.join(latest_artifact(store, "TunerResults", "Tuner").uri,
                           "tuner_results.json")) as f:
        trials = json.load(f)
    assert len(trials) == 2 and trials[0]["score"] >= trials[1]["score"]
    assert {k: trials[0][k] for k in TUNED} == {k: values[k] for k in TUNED}
    with open(os.path.join(outcome.pushed_path, "assets.extra", "training.json")) as f:
        trained = json.load(f)
    assert {k: trained[k] for k in TUNED} == {k: values[k] for k in TUNED}
    with open(outcome.report, encoding="utf-8") as f:
        report = f.read()
    assert f"<td>{trials[0]['trial_id']}</td><td>{trials[0]['score']:.4f}</td>" in report


def test_run_report_shows_what_mlmd_and_the_artifacts_say(first_run):
    import re
    config, outcome = first_run
    with open(outcome.report, encoding="utf-8") as f:
        report = f.read()
    for section in ("Decision", "Dataset", "Data checks", "Schema", "Tuning", "Training",
                    "Metrics per class", "Confusion matrix", "Components"):
        assert f"<h2>{section}" in report
    assert f"{outcome.accuracy:.4f}" in report
    assert "Judged it: the eval split" in report and "candidate precision" in report
    assert "Errors you can see" in report and 'src="data:image/png;base64,' in report
    assert 'class="ok">BLESSED' in report  # the blessing of the first run
    assert "none (nothing served yet)" in report
    assert f"Pushed version 1: {outcome.pushed_path}" in report
    assert "<tr><td>train</td><td>1437</td></tr>" in report  # 4 of every 5 digits
    assert "<tr><td>eval</td><td>360</td></tr>" in report
    run, = re.findall(r"<tr><td>steps run \(budget\)</td><td>(\d+) \(240\)</td></tr>", report)
    assert 0 < int(run) <= 240 and re.search(
        r"<tr><td>stopped at</td><td>(plateau|budget|target)</td></tr>", report)
    assert re.search(r"<tr><td>seconds to within 0.5 points of the final validation accuracy"
                     r"</td><td>\d+\.\d</td></tr>", report)
    assert "<tr><td>training examples</td><td>1437</td></tr>" in report
    assert report.count("<tr><td>tuned ") == 3
    assert report.count("<polyline") == 4  # loss and accuracy, train and validation
    assert 'aria-label="confusion matrix"' in report
    cells = [int(n) for n in re.findall(r'<text class="n" [^>]*>(\d+)</text>', report)]
    assert sum(cells) == 360  # every eval example lands in one cell
    for component in COMPONENTS:
        assert f"<td>{component}</td>" in report


@pytest.mark.skipif(not shutil.which("chromium"), reason="no Chromium on this machine")
def test_run_report_shows_its_thumbnails_in_chromium(first_run):
    """The one HTML file renders its own images (no network, no other file): every
    thumbnail decodes, mistakes carry true and predicted class names."""
    from playwright.sync_api import sync_playwright
    _, outcome = first_run
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(f"file://{outcome.report}")
            widths = page.eval_on_selector_all("figure.thumb img",
                                               "images => images.map(i => i.naturalWidth)")
            assert widths and all(w > 0 for w in widths)
            assert "predicted" in page.inner_text("figure.thumb figcaption")
            page.locator("h2", has_text="Errors you can see").scroll_into_view_if_needed()
            page.screenshot(path=os.path.join(ROOT, "outputs", "screenshots", "run-report.png"))
        finally:
            browser.close()


@pytest.mark.digits_run_last
def test_a_change_of_config_code_served_version_or_data_takes_the_normal_path(
        first_run, tmp_path):
    """Each change alone makes the rerun's identity differ from the last run's, and
    ``replay`` records nothing. (Last in the session: it rolls back and touches the data of
    the shared digits run.)"""
    config, _ = first_run
    local_runner.run(config)  # after other settings' runs: the normal path records its key
    recorded = _runs(config)[-1].custom_properties[rerun.KEY].string_value
    assert rerun.identity(config).key == recorded

    def normal_path(changed):
        found, runs = rerun.identity(changed), len(_runs(config))
        assert found.key != recorded and rerun.replay(changed, found) is None
        assert len(_runs(config)) == runs

    normal_path(dataclasses.replace(config, learning_rate=config.learning_rate / 2))
    for edit in ("", "# an edit\n"):  # the same code in another checkout, then edited
        copy = tmp_path / ("edited" if edit else "same")
        for package in provenance.PACKAGES:  # the code project_sha256 hashes
            shutil.copytree(os.path.join(ROOT, package), copy / package,
                            ignore=shutil.ignore_patterns("__pycache__"))
        with open(copy / "components" / "anomaly_gate.py", "a") as f:
            f.write(edit)
        argv = ["--work-dir", config.work_dir, "--data-root", config.data_root] + FAST
        key = subprocess.run([sys.executable, "-c", (
            "from pipeline import rerun; from pipeline.config import PipelineConfig; "
            f"print(rerun.identity(PipelineConfig.from_args({argv!r}, {{}})).key)")],
            capture_output=True, text=True, cwd=copy, timeout=60, check=True).stdout.strip()
        assert (key == recorded) == (not edit)
    assert rollback.main(["--push-dir", config.push_dir, "--to-version", "1",
                          "--reason", "a served version changed"]) == 0
    normal_path(config)
    data = sorted(glob.glob(os.path.join(config.data_root, "train", "*")))[0]
    os.utime(data, (os.stat(data).st_atime, os.stat(data).st_mtime + 1))
    normal_path(config)
