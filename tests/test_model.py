"""The Keras model builder and the distribution-strategy choice."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from modules.features import IMAGE_XF, ImageSpec
from modules.model import build_model
from modules.trainer import make_strategy, strategy_kind

SPEC = ImageSpec("image", "label", 8, 8, 1, 10)


def test_model_maps_pixels_to_class_probabilities():
    model = build_model(SPEC)
    assert model.input_shape == (None, 8, 8, 1) and model.inputs[0].name == IMAGE_XF
    probabilities = model(np.random.rand(3, 8, 8, 1).astype("float32")).numpy()
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_model_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 256)
    images = (rng.random((256, 8, 8, 1)) * 0.2 + labels[:, None, None, None] * 0.8)
    model = build_model(ImageSpec("image", "label", 8, 8, 1, 2))
    history = model.fit(images.astype("float32"), labels, epochs=3, verbose=0)
    assert history.history["accuracy"][-1] > 0.95


@pytest.mark.parametrize("requested, gpus, tf_config, kind", [
    ("auto", 0, None, "one_device"),
    ("auto", 1, None, "one_device"),
    ("auto", 4, None, "mirrored"),
    ("auto", 0, json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                            "task": {"type": "worker", "index": 0}}), "multi_worker"),
    ("auto", 2, json.dumps({"cluster": {"worker": ["a:1"]}}), "mirrored"),
    ("one_device", 4, None, "one_device"),
    ("mirrored", 0, None, "mirrored"),
])
def test_strategy_kind(requested, gpus, tf_config, kind):
    assert strategy_kind(requested, gpus, tf_config) == kind


def test_one_device_strategy_on_the_cpu():
    strategy = make_strategy("one_device", [])
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.num_replicas_in_sync == 1


def test_augmentation_layers_act_only_in_training():
    model = build_model(SPEC, augmentation=("flip", "rotate", "zoom"))
    images = np.random.rand(2, 8, 8, 1).astype("float32")
    np.testing.assert_allclose(model(images, training=False), model(images, training=False))
    assert any("random_flip" in layer.name for layer in model.layers)


def test_mirrored_strategy_over_several_devices():
    """Two logical CPUs stand in for two GPUs (fresh process: devices are fixed at TF start)."""
    code = textwrap.dedent("""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from modules.trainer import make_strategy
        strategy = make_strategy("mirrored",
                                 [d.name for d in tf.config.list_logical_devices("CPU")])
        print(type(strategy).__name__, strategy.num_replicas_in_sync)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["MirroredStrategy", "2"]
