"""The TFLite export on photo-like images (tools/make_shapes.py): the full-integer model's
types and accuracy, and the gate that keeps a TFLite model too far behind out of the push."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))

from make_shapes import encoded_shapes  # noqa: E402
from domain.features import ImageSpec  # noqa: E402
from domain.exported import TFLITE_PATH, TFLITE_SUMMARY, tflite_line  # noqa: E402
from modules.model import build_model  # noqa: E402
from modules.preprocessing import decode_images  # noqa: E402
from modules.tflite import HELD_BACK, LiteClassifier, place_tflite, tflite_bytes  # noqa: E402

pytestmark = pytest.mark.training  # trains a small model on generated images

SPEC = ImageSpec("image", "label", 32, 32, 1, 3)  # grey: learnt in seconds, not minutes


def _shapes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` photo-like images decoded as the pipeline does, and their class ids."""
    encoded, labels = encoded_shapes(n, SPEC.num_classes, seed)
    return decode_images(tf.constant(encoded), SPEC).numpy(), labels


@pytest.fixture(scope="module")
def trained():
    """A CNN trained briefly on shapes, its held-out images and its accuracy on them."""
    tf.keras.utils.set_random_seed(0)
    images, labels = _shapes(600, seed=1)
    model = build_model(SPEC, learning_rate=3e-3, augmentation=(), width=16)
    model.fit(images, labels, epochs=15, batch_size=32, verbose=0)
    test_images, test_labels = _shapes(300, seed=2)
    accuracy = np.mean(model.predict(test_images, verbose=0).argmax(1) == test_labels)
    return model, images[:100], test_images, test_labels, accuracy


def test_int8_takes_and_answers_uint8_pixel_bytes(trained):
    model, calibration, *_ = trained
    lite = LiteClassifier(tflite_bytes(model, SPEC, "int8", calibration))
    assert lite.types == ("uint8", "uint8")
    interpreter = tf.lite.Interpreter(model_content=tflite_bytes(model, SPEC, "int8",
                                                                 calibration))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    scale, zero = inp["quantization"]
    assert zero == 0 and scale == pytest.approx(1 / 255)  # device: the resized image's bytes
    assert out["quantization"][0] == pytest.approx(1 / 256)


def test_int8_needs_calibration_images(trained):
    with pytest.raises(ValueError, match="calibration"):
        tflite_bytes(trained[0], SPEC, "int8")


def test_int8_keeps_the_accuracy_within_the_drop_limit(trained):
    model, calibration, images, labels, accuracy = trained
    assert accuracy > 0.5  # learnt something: 3 classes
    lite = LiteClassifier(tflite_bytes(model, SPEC, "int8", calibration))
    ids = lite.probabilities(images).argmax(1)
    assert accuracy - np.mean(ids == labels) <= 0.01
    # Same class as Keras for most images (a model this young has many near-ties to flip).
    assert np.mean(ids == model.predict(images, verbose=0).argmax(1)) >= 0.9


def test_a_tflite_model_too_far_behind_stays_out_of_the_push(trained, tmp_path):
    """Calibrated on near-black images, the int8 model clips real activations and loses
    accuracy: it goes to the ModelRun, not beside the SavedModel that is pushed."""
    model, calibration, images, labels, accuracy = trained
    bad = tflite_bytes(model, SPEC, "int8", calibration * 0.02)
    lite_accuracy = float(np.mean(LiteClassifier(bad).probabilities(images).argmax(1) == labels))
    assert accuracy - lite_accuracy > 0.01
    out_dir, run_dir = tmp_path / "serving", tmp_path / "run"
    summary = {"mode": "int8", "accuracy": lite_accuracy, "saved_model_accuracy": accuracy,
               "drop": accuracy - lite_accuracy, "agreement": 0.5, "kb": 10.0,
               "saved_model_kb": 40.0, "ms_per_image": 0.1, "saved_model_ms_per_image": 1.0}
    placed = place_tflite(bad, summary, 0.01, str(out_dir), str(run_dir))
    assert not (out_dir / TFLITE_PATH).exists() and (run_dir / HELD_BACK).exists()
    assert json.loads((out_dir / TFLITE_SUMMARY).read_text())["reason"] == placed["reason"]
    assert "not pushed: its accuracy" in tflite_line(placed)
    kept = place_tflite(bad, dict(summary, drop=0.005), 0.01, str(out_dir), str(run_dir))
    assert (out_dir / TFLITE_PATH).exists() and kept["reason"] == ""
