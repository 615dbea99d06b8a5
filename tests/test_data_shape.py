"""The model's input and classes from the data (issue 31): the sizing rule, the ingest
manifest and class map, a sample of TFRecords without them, grey images, explicit options,
and a class count that disagrees. No training."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from domain import data_shape as rule
from ops.ingest import ingest
from pipeline import data_shape
from pipeline.config import PipelineConfig
from pipeline.preflight import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from make_shapes import write_shapes  # noqa: E402


def _config(data: str, *flags: str) -> PipelineConfig:
    return PipelineConfig.from_args(["--data-root", data, *flags], environ={})


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Photo-like images (40-300 px, colour, grey and RGBA, JPEG and PNG), ingested."""
    work = tmp_path_factory.mktemp("photos")
    write_shapes(str(work / "images"), 20, 3, seed=3)
    ingest(str(work / "images"), str(work / "data"), shards=1, workers=1, progress=False)
    return str(work / "data")


def test_the_sizing_rule_serves_tiny_and_large_images():
    assert rule.input_side(8) == 8 and rule.input_side(5) == 5  # tiny: as they are
    assert rule.input_side(30) == 24 and rule.input_side(100) == 64  # the cnn's CPU cap
    assert rule.input_side(100, "mobilenet_v2") == 96
    assert rule.input_side(20, "mobilenet_v2") == 32  # what the application backbones need
    assert rule.input_side(4000, "efficientnet_b0") == 128
    assert rule.input_channels(colour=1, images=20) == 1
    assert rule.input_channels(colour=2, images=20) == 3


def test_shape_and_classes_come_from_the_ingest_manifest_and_the_class_map(photos):
    config, choice = data_shape.resolve(_config(photos))
    assert (config.image_height, config.image_width, config.image_channels) == (64, 64, 3)
    assert config.num_classes == 3 and config.class_names == ("circle", "square", "triangle")
    assert not config.from_data
    line = choice.line()
    assert line.startswith("Input 64×64×3, 3 classes (circle, square, triangle): from the "
                           "ingest manifest (median side ")
    assert "classes.json" in line and "set --image-height/--image-width/--image-channels/" \
                                      "--num-classes to override" in line
    # Resolving again changes nothing (a rerun keys the same values).
    assert data_shape.resolve(config)[0] == config


def test_records_without_a_manifest_are_sampled(photos, tmp_path):
    data = str(tmp_path / "elsewhere")
    shutil.copytree(photos, data)
    os.remove(os.path.join(data, "manifest.json"))
    os.remove(os.path.join(data, "classes.json"))
    config, choice = data_shape.resolve(_config(data))
    assert (config.image_height, config.image_width, config.image_channels,
            config.num_classes) == (64, 64, 3, 3)
    assert config.class_names == ()  # no class map: the ids name the classes
    assert "a sample of 60 decoded images" in choice.line()
    assert "the labels of the records" in choice.line()


def _grey_folder(root: str, side: int, per_class: int = 8) -> None:
    from PIL import Image
    rng = np.random.default_rng(0)
    for label in ("dark", "light"):
        os.makedirs(os.path.join(root, label))
        for n in range(per_class):
            pixels = rng.integers(0, 128, (side, side)) + (127 if label == "light" else 0)
            image = Image.fromarray(pixels.astype(np.uint8))
            if n % 2:  # grey pixels in an RGB JPEG are grey too
                image.convert("RGB").save(os.path.join(root, label, f"{n}.jpg"), quality=95)
            else:
                image.save(os.path.join(root, label, f"{n}.png"))


def test_grey_images_give_one_channel_and_hint_at_a_class_with_few_images(tmp_path):
    _grey_folder(str(tmp_path / "images"), 20)
    ingest(str(tmp_path / "images"), str(tmp_path / "data"), shards=1, workers=1,
           progress=False)
    config, choice = data_shape.resolve(_config(str(tmp_path / "data")))
    assert (config.image_height, config.image_width, config.image_channels,
            config.num_classes) == (16, 16, 1, 2)
    assert any(h.startswith("hint: classes with fewer than 10 training images: dark (")
               for h in choice.hints), choice.hints
    # The sample of the same records without the manifest agrees.
    os.remove(str(tmp_path / "data" / "manifest.json"))
    assert data_shape.resolve(_config(str(tmp_path / "data")))[0] == config


def test_explicit_options_win(photos):
    config, choice = data_shape.resolve(_config(photos, "--image-height", "32",
                                                "--image-channels", "1"))
    assert (config.image_height, config.image_width, config.image_channels,
            config.num_classes) == (32, 32, 1, 3)  # a height alone sets the width too
    assert "set --num-classes to override" in choice.line()
    config, choice = data_shape.resolve(_config(
        photos, "--image-height", "24", "--image-width", "40", "--image-channels", "3",
        "--num-classes", "3"))
    assert (config.image_height, config.image_width) == (24, 40)
    assert choice.line().endswith("as the options set them")


def test_a_num_classes_that_disagrees_with_the_class_map_is_one_line_and_exit_2(photos,
                                                                                tmp_path):
    with pytest.raises(UserError, match="--num-classes 5 disagrees with the data: .*has 3 "
                                        r"classes \(circle, square, triangle\)"):
        data_shape.resolve(_config(photos, "--num-classes", "5"))
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.local_runner", "--data-root", photos, "--work-dir",
         str(tmp_path / "work"), "--num-classes", "5"], capture_output=True, text=True,
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: --num-classes 5 disagrees with the data")
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_embedded_digits_keep_their_config():
    config = PipelineConfig.from_args([], environ={})
    assert (config.image_height, config.image_width, config.image_channels,
            config.num_classes, config.class_names) == (8, 8, 1, 10, ())
    resolved, choice = data_shape.resolve(config)
    assert resolved == config and choice.line() == "Input 8×8×1, 10 classes: the embedded digits"


def test_large_images_get_a_hint():
    config = PipelineConfig(data_root="/data", image_height=64, image_width=64,
                            image_channels=3, num_classes=2)
    found = data_shape.hints(config, data_shape.Seen(median_side=1024, images=10))
    assert found == ["hint: the images' median side is 1024 px, 16× the 64 px input: small "
                     "details are lost; if the model is not good enough, try a larger "
                     "--image-height/--image-width (slower) or --backbone mobilenet_v2"]


def test_kubeflow_needs_the_options_when_the_data_cannot_be_read_at_compile_time(capsys):
    from pipeline import kubeflow_runner
    code = kubeflow_runner.main(["--pipeline-root", "gs://b/r", "--data-root", "gs://b/data",
                                 "--serving-dir", "/mnt/data/serving", "--pvc-name", "data",
                                 "--image-channels", "3"])
    error = capsys.readouterr().err
    assert code == 2 and len(error.strip().splitlines()) == 1, error
    assert error.strip().endswith("--data-root gs://b/data cannot be read here, so the model's "
                                  "input cannot come from the data: set --image-height "
                                  "--image-width --num-classes")


def test_every_ingest_option_has_a_description(capsys):
    from ops import ingest as command
    with pytest.raises(SystemExit):
        command.main(["--help"])
    out = capsys.readouterr().out
    options = out[out.index("options:"):]
    for option in ("--shards", "--compress", "--eval-fraction", "--span", "--workers",
                   "--max-skipped-fraction", "--max-pixels"):
        line = " ".join(options[options.index(option):].split("\n  -")[0].split())
        assert len(line.split()) > 3, f"{option} has no description: {line!r}"


def test_kubeflow_resolves_once_at_compile_time_and_the_spec_records_it(photos, tmp_path,
                                                                         capsys):
    import json

    import yaml

    from pipeline.kubeflow_runner import compile_pipeline
    mount = os.path.dirname(photos)
    config = PipelineConfig.from_args([
        "--pipeline-root", "gs://b/r", "--pvc-name", "data", "--pvc-mount-path", mount,
        "--data-root", photos, "--serving-dir", os.path.join(mount, "serving")], environ={})
    package = compile_pipeline(config, str(tmp_path / "p.yaml"))
    assert capsys.readouterr().err.startswith("Input 64×64×3, 3 classes (circle, square, "
                                              "triangle): from the ingest manifest")

    def strings(node):
        if isinstance(node, dict):
            return [s for v in node.values() for s in strings(v)]
        if isinstance(node, list):
            return [s for v in node for s in strings(v)]
        return [node] if isinstance(node, str) and '"image_height"' in node else []

    with open(package) as f:
        configs = [json.loads(s) for s in strings(next(yaml.safe_load_all(f)))
                   if s.lstrip().startswith("{")]
    assert configs and all((c["image_height"], c["image_width"], c["image_channels"],
                            c["num_classes"]) == (64, 64, 3, 3) for c in configs)
