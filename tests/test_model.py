"""The Keras model builder and the distribution-strategy choice."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from domain.features import AUGMENTATIONS, IMAGE_XF, ImageSpec
from modules.tflite import tflite_bytes
from modules.model import backbone_of, build_model, learning_rate, unfreeze_top
from modules.budget import MIN_ROUND_STEPS, round_steps, step_budget
from modules.strategy import is_chief, keras_api, make_strategy, strategy_kind

SPEC = ImageSpec("image", "label", 8, 8, 1, 10)


def test_model_maps_pixels_to_class_probabilities():
    model = build_model(SPEC)
    assert model.input_shape == (None, 8, 8, 1) and model.inputs[0].name == IMAGE_XF
    probabilities = model(np.random.rand(3, 8, 8, 1).astype("float32")).numpy()
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_model_learns_a_separable_problem():
    """A horizontal or a vertical bar anywhere, at any brightness and contrast polarity."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 256)
    images = np.repeat(rng.random((256, 1, 1, 1)), 8, 1).repeat(8, 2)
    for image, label, at, level in zip(images, labels, rng.integers(0, 8, 256), rng.random(256)):
        (image[at] if label else image[:, at])[:] = level
    model = build_model(ImageSpec("image", "label", 8, 8, 1, 2))
    history = model.fit(images.astype("float32"), labels, epochs=5, verbose=0)
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


@pytest.mark.parametrize("tf_config, chief", [
    (None, True),
    ({"cluster": {"worker": ["a", "b"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a", "b"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["c"], "worker": ["a"]}, "task": {"type": "worker", "index": 0}},
     False),
    ({"cluster": {"chief": ["c"], "worker": ["a"]}, "task": {"type": "chief", "index": 0}}, True),
])
def test_only_the_chief_writes_the_model(tf_config, chief):
    assert is_chief(json.dumps(tf_config) if tf_config else None) is chief


def test_keras_3_except_for_multi_worker():
    assert keras_api("mirrored") is keras
    assert keras_api("multi_worker").__name__ == "tf_keras"


def test_one_device_is_the_default_strategy():
    strategy = make_strategy("one_device", [])
    assert strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy()
    assert strategy.num_replicas_in_sync == 1


def test_augmentation_layers_act_only_in_training():
    model = build_model(ImageSpec("image", "label", 8, 8, 3, 10), augmentation=AUGMENTATIONS)
    images = np.random.rand(4, 8, 8, 3).astype("float32")
    np.testing.assert_allclose(model(images, training=False), model(images, training=False))
    names = [layer.name for layer in model.layers]
    assert {"randomflip", "randomcolour", "randominvert"} <= set(names)
    assert any(name.startswith("random_rotation") for name in names)
    colour, invert = (model.get_layer(name) for name in ("randomcolour", "randominvert"))
    trained = [colour(images, training=True).numpy() for _ in range(8)]
    assert any(not np.allclose(t, images) for t in trained)
    # Channels are permuted or averaged, never invented: every pixel's sum is kept.
    np.testing.assert_allclose([t.sum(-1) for t in trained], [images.sum(-1)] * 8, rtol=1e-5)
    mirrored = model.get_layer("randomflip")(images, training=True).numpy()
    assert all(np.allclose(m, x) or np.allclose(m, x[:, ::-1]) for m, x in zip(mirrored, images))
    inverted = invert(images, training=True).numpy()
    assert all(np.allclose(i, x) or np.allclose(i, 1 - x) for i, x in zip(inverted, images))


def test_mirrored_strategy_over_several_devices():
    """Two logical CPUs stand in for two GPUs (fresh process: devices are fixed at TF start)."""
    code = textwrap.dedent("""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from modules.strategy import make_strategy
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
    np.testing.assert_array_equal(backbone_of(model).weights[0].numpy(),
                                  source.weights[0].numpy())


def test_mixed_precision_keeps_a_float32_head():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(SPEC)
        assert model.layers[1].compute_dtype == "float16"
        assert model(np.random.rand(1, 8, 8, 1).astype("float32")).dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("mode, api", [("float16", "keras"), ("dynamic_int8", "keras"),
                                       ("float16", "tf_keras")])
def test_tflite_model_agrees_with_the_keras_model(mode, api):
    images, labels = _separable()
    spec = ImageSpec("image", "label", 8, 8, 1, 2)
    model = build_model(spec, api=importlib.import_module(api))
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


WORKER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    from domain.features import ImageSpec
    from modules.model import build_model, learning_rate
    from modules.budget import Convergence
    from modules.strategy import keras_api, make_strategy, strategy_kind
    from modules.training import phase_callbacks
    kind = strategy_kind("auto", 0, os.environ["TF_CONFIG"])
    strategy, api = make_strategy(kind, []), keras_api(kind)
    with strategy.scope():
        schedule = learning_rate("warmup_cosine", 0.01, 12, api)
        model = build_model(ImageSpec("image", "label", 8, 8, 1, 2), schedule, api=api)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 64)
    images = (rng.random((64, 8, 8, 1)) * 0.2 + labels[:, None, None, None] * 0.8)
    data = tf.data.Dataset.from_tensor_slices((images.astype("float32"), labels)).batch(16)
    # The Trainer's rounds: a fixed validation, the convergence callback, an annealed rate.
    convergence = Convergence(12, 4, 0.0, 0.0, schedule)
    callbacks = phase_callbacks({"lr_schedule": "warmup_cosine"}, sys.argv[1], api, convergence)
    history = model.fit(data.repeat(), steps_per_epoch=4, epochs=2, verbose=0,
                        validation_data=data.take(2).repeat(), validation_steps=2,
                        callbacks=callbacks)
    schedule.anneal(8, 4)
    model.fit(data.repeat(), steps_per_epoch=4, epochs=1, verbose=0)
    print("RESULT", kind, type(strategy).__name__, strategy.num_replicas_in_sync,
          history.history["loss"][-1], len(convergence.rounds), float(schedule(12)))
""")


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_training_with_two_local_workers_on_loopback(tmp_path):
    """Two workers train one model with the Trainer's validation rounds, its convergence
    callback and learning-rate schedule, annealed between two fits."""
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    procs = []
    for index in range(2):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / str(index))],
                                      env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        results.append([line for line in out.splitlines() if line.startswith("RESULT")][0].split())
    for result in results:
        assert result[1:4] == ["multi_worker", "CollectiveAllReduceStrategy", "2"]  # = MWMS
        assert result[5] == "2" and float(result[6]) == pytest.approx(1e-4)  # rounds, floor
    assert results[0][4] == results[1][4]  # one synchronised model: the same loss on both


def _trainer_config(**overrides) -> dict:
    from pipeline.config import PipelineConfig
    return PipelineConfig(image_height=8, image_width=8, image_channels=1,
                          **overrides).trainer_config()


def test_warm_start_loads_the_served_weights_only_when_the_architecture_matches(tmp_path):
    from modules.warm_start import export_warm_start, warm_start
    config = _trainer_config()
    spec = ImageSpec.from_custom_config(config)
    served = build_model(spec)
    served.fit(np.random.default_rng(0).random((32, 8, 8, 1)), np.arange(32) % 10, epochs=1,
               verbose=0)
    export_warm_start(served, str(tmp_path / "v1"), config, None)
    pixels = np.random.default_rng(1).random((4, 8, 8, 1)).astype("float32")

    fresh = build_model(spec)
    assert not np.allclose(fresh.predict(pixels, verbose=0), served.predict(pixels, verbose=0))
    result = warm_start(fresh, str(tmp_path / "v1"), config)
    assert result["warm_started"]
    np.testing.assert_allclose(fresh.predict(pixels, verbose=0),
                               served.predict(pixels, verbose=0), rtol=1e-5)

    wider = _trainer_config(num_classes=12)
    other = build_model(ImageSpec.from_custom_config(wider))
    result = warm_start(other, str(tmp_path / "v1"), wider)
    assert not result["warm_started"]
    assert "num_classes: served 10, now 12" in result["reason"]
    assert "nothing is served" in warm_start(other, str(tmp_path / "absent"), wider)["reason"]


def test_warm_start_says_so_when_weights_do_not_fit_despite_equal_options(tmp_path):
    from modules.warm_start import export_warm_start, warm_start
    config, other = _trainer_config(), _trainer_config(num_classes=12)
    # Weights of another model recorded under this config's options (e.g. an older release).
    export_warm_start(build_model(ImageSpec.from_custom_config(other)), str(tmp_path), config,
                      None)
    result = warm_start(build_model(ImageSpec.from_custom_config(config)), str(tmp_path), config)
    assert not result["warm_started"] and "weights do not fit this model" in result["reason"]


def test_step_budget_is_derived_from_the_data_size():
    assert step_budget(500, 0, 1000, 32) == 500  # given steps win
    assert step_budget(0, 3, 1000, 32) == 3 * 32  # given passes over the data
    assert step_budget(0, 0, 480, 32) == 100 * 15  # small data: about 48,000 images seen
    assert step_budget(0, 0, 1_000_000, 32) == 5 * 31_250  # large data: at least 5 passes
    assert step_budget(0, 0, 1_000, 32) == 48 * 32
    assert step_budget(0, 0, 10, 32) == 100  # tiny data: at most 100 passes


def test_warmup_cosine_rises_then_decays_and_plateau_is_constant():
    schedule = learning_rate("warmup_cosine", 0.01, 100)
    rates = [float(schedule(step)) for step in (0, 5, 10, 50, 100)]
    assert rates[0] < rates[1] < rates[2] == pytest.approx(0.01)
    assert rates[2] > rates[3] > rates[4] == pytest.approx(1e-4, rel=0.1)
    assert learning_rate("plateau", 0.01, 100) == 0.01
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        learning_rate("step", 0.01, 100)


def test_rounds_are_small_but_keep_the_validation_cheap():
    assert round_steps(1500, 2) == MIN_ROUND_STEPS
    assert round_steps(1500, 20) == 100  # validation: at most 1/5 of a round's batches
    assert round_steps(10, 2) == 10


@pytest.mark.parametrize("api", ["keras", "tf_keras"])
def test_tflite_export_with_every_augmentation(api):
    """Rotate and zoom draw random numbers in Keras's inference graph unless the export
    states inference mode: the converted model must exist and agree with Keras."""
    spec = ImageSpec("image", "label", 8, 8, 3, 2)
    model = build_model(spec, augmentation=AUGMENTATIONS, api=importlib.import_module(api))
    interpreter = tf.lite.Interpreter(model_content=tflite_bytes(model, spec, "float16"))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    image = np.random.default_rng(0).random((1, 8, 8, 3)).astype("float32")
    interpreter.set_tensor(inp["index"], image)
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(out["index"]),
                               model(image, training=False), atol=0.02)
