"""The typed configuration: defaults, environment and command-line overrides, validation."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from pipeline.config import (GROUPS, RUNNER, SCOPES, SETUP_FILE, TRAINER, TRANSFORM,
                             PipelineConfig, fields_in)


def test_defaults_work_out_of_the_box(tmp_path):
    config = PipelineConfig(work_dir=str(tmp_path))
    assert config.uses_default_data
    assert config.pipeline_root == str(tmp_path / "pipelines" / "image-classifier")
    assert config.metadata_path.endswith("metadata/image-classifier.sqlite")
    assert config.push_dir == str(tmp_path / "serving" / "image_classifier")
    assert config.beam_pipeline_args[:1] == ["--direct_running_mode=in_memory"]


def test_environment_overrides_defaults_and_flags_override_environment():
    environ = {"TFX_IMAGE_TRAIN_STEPS": "123", "TFX_IMAGE_MIN_ACCURACY": "0.5",
               "TFX_IMAGE_ENABLE_CACHE": "false", "TFX_IMAGE_BEAM_ARGS": "--a=1 --b='x y'"}
    config = PipelineConfig.from_args(["--min-accuracy", "0.75", "--image-channels", "3"], environ)
    assert config.train_steps == 123
    assert config.min_accuracy == 0.75
    assert config.image_channels == 3
    assert config.enable_cache is False
    assert config.beam_args == ("--a=1", "--b=x y")
    assert config.beam_pipeline_args[-2:] == ["--a=1", "--b=x y"]


def test_multi_processing_beam_mode():
    config = PipelineConfig(beam_mode="multi_processing", beam_workers=4)
    assert config.beam_pipeline_args == ["--direct_running_mode=multi_processing",
                                         "--direct_num_workers=4", f"--setup_file={SETUP_FILE}"]


def test_in_process_beam_runs_on_the_fn_api_runner_with_no_prism_attempt():
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.util import assert_that, equal_to
    with beam.Pipeline(options=PipelineOptions(PipelineConfig().beam_pipeline_args)) as p:
        assert type(p.runner) is FnApiRunner
        assert_that(p | beam.Create([1, 2]) | beam.Map(lambda x: x * 3), equal_to([3, 6]))


@pytest.mark.parametrize("bad", [{"beam_mode": "spark"}, {"image_channels": 2},
                                 {"batch_size": 0}, {"min_accuracy": -0.1},
                                 {"train_steps": -1}, {"epochs": -2}, {"width": 12},
                                 {"dropout": 1.0}, {"lr_schedule": "step"},
                                 {"augmentation": ("blur",)},
                                 {"raw_min_value": 1.0, "raw_max_value": 1.0}])
def test_invalid_values_are_rejected(bad):
    with pytest.raises(ValueError):
        PipelineConfig(**bad)


def test_bad_flag_value_names_the_option(capsys):
    with pytest.raises(SystemExit):
        PipelineConfig.from_args(["--enable-cache", "maybe"], {})
    assert "--enable-cache" in capsys.readouterr().err


def test_module_configs_are_what_the_tfx_modules_read():
    config = PipelineConfig(image_height=32, image_width=24, epochs=3)
    trainer, transform = config.trainer_config(), config.transform_config()
    assert trainer["image_height"] == 32 and transform["image_width"] == 24
    assert trainer["class_names"] == [str(i) for i in range(10)]
    assert "epochs" not in transform  # no Transform rerun
    assert "min_accuracy" not in trainer and "data_root" not in trainer
    json.dumps(trainer)


def test_run_time_options_are_execution_properties_locally_and_parameters_on_kubeflow():
    from tfx import v1 as tfx

    from components.standard import check_trainer_parameters
    from pipeline.pipeline import RUN_TIME_PARAMETERS, Observed, create_pipeline
    config = PipelineConfig(epochs=3, learning_rate=0.01, min_accuracy=0.7)
    assert "epochs" not in config.trainer_config()  # the Trainer takes it at run time
    local = {n.id: n for n in create_pipeline(config, None, Observed("f", 0)).components}
    assert (local["Trainer"].exec_properties["epochs"],
            local["Trainer"].exec_properties["learning_rate"],
            local["Evaluator"].exec_properties["min_accuracy"],
            local["DataSpan"].exec_properties["span"]) == (3, 0.01, 0.7, 0)
    kubeflow = {n.id: n for n in create_pipeline(config).components}
    parameter = kubeflow["Trainer"].exec_properties["epochs"]
    assert isinstance(parameter, tfx.dsl.experimental.RuntimeParameter)
    assert (parameter.name, parameter.default) == ("epochs", 3)
    assert set(RUN_TIME_PARAMETERS) == {"span", "train_steps", "epochs", "learning_rate",
                                        "batch_size", "min_accuracy"}
    with pytest.raises(ValueError, match="train_steps must be >= 0, got -2"):
        check_trainer_parameters(train_steps=-2, epochs=3, learning_rate=0.1, batch_size=8)
    check_trainer_parameters(train_steps=0, epochs=0, learning_rate=0.1, batch_size=8)
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        check_trainer_parameters(train_steps=20, epochs=3, learning_rate=0.0, batch_size=8)


def test_span_needs_spans():
    with pytest.raises(ValueError, match="needs spans=true"):
        PipelineConfig(span=2)
    assert PipelineConfig(span=2, spans=True).span == 2


def test_runner_help_lists_every_option():
    result = subprocess.run([sys.executable, "-m", "pipeline.local_runner", "--help"],
                            capture_output=True, text=True, check=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    for option in ("--data-root", "--pipeline-root", "--metadata-path", "--serving-dir",
                   "--model-name", "--train-steps", "--batch-size", "--min-accuracy",
                   "--beam-mode", "--beam-args"):
        assert option in result.stdout


def test_every_field_describes_itself_with_help_group_and_scope():
    for field in dataclasses.fields(PipelineConfig):
        assert field.metadata.get("help"), f"{field.name} has no help text"
        assert field.metadata.get("group") in GROUPS, f"{field.name} has no option group"
        assert field.metadata.get("scope") in SCOPES, f"{field.name} has no scope"


def test_scopes_decide_the_custom_configs():
    config = PipelineConfig()
    transform = set(fields_in(TRANSFORM))
    assert set(config.transform_config()) == transform | {"source_sha256"}
    assert set(config.trainer_config()) == transform | set(fields_in(TRAINER)) | {
        "code_version", "source_sha256"}
    assert not set(fields_in(RUNNER)) & set(config.trainer_config())  # no cache-key noise


def test_help_lists_the_options_by_group_with_their_descriptions(capsys):
    with pytest.raises(SystemExit):
        PipelineConfig.from_args(["--help"], environ={})
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.endswith(" options:")] == [
        f"{group} options:" for group in GROUPS]
    text = " ".join(out.split())
    assert "the model's input height in pixels; 0: from the data (the images' median" in text
    assert "the embedded digits: 8) (default: 0)" in text


def test_editing_a_module_changes_exactly_the_cache_keys_of_the_components_running_it(
        tmp_path, monkeypatch):
    """Transform runs preprocessing (and features); the Trainer also model, export, trainer;
    the Tuner model and tuner, not trainer's run_fn. Their custom_configs (cache keys) carry a
    hash of those files."""
    import shutil

    from modules import provenance
    copy = tmp_path / "code"
    for package in provenance.PACKAGES:
        shutil.copytree(os.path.join(os.path.dirname(provenance.MODULES), package),
                        copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "MODULES", str(copy / "modules"))
    config = PipelineConfig()

    def keys():
        return (config.transform_config()["source_sha256"],
                config.trainer_config()["source_sha256"], config.tuner_config()["source_sha256"])

    changed = {}
    for name in ("tuner", "trainer", "model", "preprocessing", "features"):
        before = keys()
        with open(copy / ("domain" if name == "features" else "modules") / f"{name}.py",
                  "a") as f:
            f.write("\n# edited\n")
        changed[name] = tuple(a != b for a, b in zip(before, keys()))
    assert changed == {"tuner": (False, False, True), "trainer": (False, True, False),
                       "model": (False, True, True), "preprocessing": (True, True, True),
                       "features": (True, True, True)}


def test_beam_args_say_where_the_code_is_so_tfx_builds_no_package_per_component():
    from tfx.utils import dependency_utils
    args = PipelineConfig().beam_pipeline_args
    setup = [a for a in args if a.startswith("--setup_file=")]
    assert len(setup) == 1 and os.path.isfile(setup[0].partition("=")[2])
    assert dependency_utils.make_beam_dependency_flags(args) == args  # no ephemeral sdist
    remote = PipelineConfig(beam_args=("--sdk_container_image=registry.example.com/tip:1",))
    assert not any(a.startswith("--setup_file") for a in remote.beam_pipeline_args)
