"""A distilled student with a full-integer TFLite model, through the whole pipeline: the
teacher is the session's pushed digits version; what ships is measured and named."""
from __future__ import annotations

import json
import os

import pytest

from domain.exported import TEACHER_FILE, TFLITE_PATH, TFLITE_SUMMARY
from ops import lineage
from pipeline import local_runner
from pipeline.config import PipelineConfig
from serving.model_card import model_card

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def student_run(digits_run, tmp_path_factory):
    """A second pipeline (its own work and serving dirs) whose int8 student learns from the
    digits run's pushed version (a short run: what is checked is what ships and what it
    names, not how well it learnt): ``(config, outcome, teacher dir)``."""
    _, taught = digits_run
    config = PipelineConfig.from_args(
        ["--work-dir", str(tmp_path_factory.mktemp("student")), "--train-steps", "120",
         "--eval-steps", "5", "--min-accuracy", "0.5", "--tflite", "int8",
         "--distill-teacher", taught.pushed_path, "--width", "16"], environ={})
    return config, local_runner.run(config), taught.pushed_path


def test_the_int8_model_is_measured_and_gated_on_the_eval_split(student_run):
    config, outcome, _ = student_run
    assert outcome.pushed, outcome
    with open(os.path.join(outcome.pushed_path, TFLITE_SUMMARY)) as f:
        lite = json.load(f)
    assert (lite["mode"], lite["input_type"], lite["output_type"]) == ("int8", "uint8", "uint8")
    assert lite["images"] > 100 and set(lite["class_recall"]) == set(map(str, range(10)))
    assert lite["kb"] < lite["saved_model_kb"] and lite["ms_per_image"] > 0
    shipped = os.path.exists(os.path.join(outcome.pushed_path, TFLITE_PATH))
    assert shipped == (lite["drop"] <= config.max_tflite_drop) == (not lite["reason"])
    assert outcome.tflite.startswith(f"TFLite int8: accuracy {lite['accuracy']:.4f}")
    assert "TFLite int8: accuracy" in local_runner.describe(outcome, config)
    with open(outcome.report, encoding="utf-8") as f:
        assert "TFLite model (eval split)" in f.read()


def test_lineage_and_the_model_card_name_the_teacher(student_run):
    config, outcome, teacher = student_run
    with open(os.path.join(outcome.pushed_path, TEACHER_FILE)) as f:
        assert json.load(f)["path"] == teacher
    summary = lineage.version_summary(lineage.version_lineage(config, outcome.pushed_version))
    assert f"teacher    served version {teacher}" in summary
    assert "tflite     TFLite int8: accuracy" in summary
    card = model_card(config.push_dir, {"stable": outcome.pushed_version})
    assert f"served version {teacher}" in card and "TFLite int8" in card
