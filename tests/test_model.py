"""The Keras model builder and the distribution-strategy choice."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from modules.features import IMAGE_XF, ImageSpec
from modules.export import tflite_bytes
from modules.model import BACKBONE_NAME, build_model, unfreeze_top
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


def _separable(n=256, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.random((n, 8, 8, 1)) * 0.2 + labels[:, None, None, None] * 0.8
    return images.astype("float32"), labels


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "efficientnet_b0"])
def test_transfer_backbone_is_frozen_then_partly_unfrozen(backbone):
    spec = ImageSpec("image", "label", 32, 32, 1, 5)
    model = build_model(spec, backbone=backbone)
    head_only = len(model.trainable_weights)
    assert head_only == 2  # the classification head's kernel and bias
    assert model(np.random.rand(2, 32, 32, 1).astype("float32")).shape == (2, 5)
    unfreeze_top(model, 10, 1e-4)
    assert len(model.trainable_weights) > head_only


def test_pretrained_weights_come_from_a_local_file(tmp_path):
    spec = ImageSpec("image", "label", 32, 32, 3, 3)
    source = keras.applications.MobileNetV2(include_top=False, weights=None, pooling="avg",
                                            input_shape=(32, 32, 3))
    path = str(tmp_path / "mobilenet.weights.h5")
    source.save_weights(path)
    model = build_model(spec, backbone="mobilenet_v2", weights=path)
    np.testing.assert_array_equal(model.get_layer(BACKBONE_NAME).weights[0].numpy(),
                                  source.weights[0].numpy())


def test_mixed_precision_keeps_a_float32_head():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(SPEC)
        assert model.layers[1].compute_dtype == "float16"
        assert model(np.random.rand(1, 8, 8, 1).astype("float32")).dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("mode", ["float16", "dynamic_int8"])
def test_tflite_model_agrees_with_the_keras_model(mode):
    images, labels = _separable()
    spec = ImageSpec("image", "label", 8, 8, 1, 2)
    model = build_model(spec)
    model.fit(images, labels, epochs=3, verbose=0)
    interpreter = tf.lite.Interpreter(model_content=tflite_bytes(model, spec, mode))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    test_images, _ = _separable(60, seed=1)
    lite = []
    for image in test_images:
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        lite.append(interpreter.get_tensor(out["index"])[0].argmax())
    keras_classes = model.predict(test_images, verbose=0).argmax(axis=1)
    assert np.mean(np.array(lite) == keras_classes) >= 0.95
