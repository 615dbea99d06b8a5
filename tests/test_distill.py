"""Knowledge distillation (modules.distill): the loss, a student moving toward a teacher whose
outputs are known, and a pushed version loaded back as a teacher."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from domain.exported import teacher_line
from domain.features import ImageSpec
from modules.distill import Distiller, distillation_loss, served_teacher, student_of
from modules.model import build_model, compile_model
from modules.warm_start import export_warm_start

SPEC = ImageSpec("image", "label", 8, 8, 1, 3)
TARGET = np.array([0.7, 0.2, 0.1], np.float32)  # the teacher's answer to every image


def _constant_teacher() -> keras.Model:
    """A teacher that answers ``TARGET`` whatever the image."""
    inputs = keras.Input(SPEC.shape)
    dense = keras.layers.Dense(3, activation="softmax", kernel_initializer="zeros",
                               bias_initializer=keras.initializers.Constant(np.log(TARGET)))
    return keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))


def test_the_loss_is_zero_for_equal_answers_and_grows_with_the_difference():
    teacher = tf.constant([TARGET, TARGET])
    assert float(distillation_loss(teacher, teacher, 4.0)) == pytest.approx(0, abs=1e-6)
    near, far = (tf.constant([p, p]) for p in ([0.6, 0.3, 0.1], [0.1, 0.2, 0.7]))
    assert 0 < float(distillation_loss(teacher, near, 4.0)) < float(
        distillation_loss(teacher, far, 4.0))
    weighted = distillation_loss(teacher, tf.constant([TARGET, [0.1, 0.2, 0.7]]), 4.0,
                                 sample_weight=tf.constant([1.0, 0.0]))
    assert float(weighted) == pytest.approx(0, abs=1e-6)  # the only differing row weighs 0


def test_the_student_moves_toward_a_teacher_with_known_outputs():
    """Labels all say class 2; with the teacher alone (alpha 0) the student learns the
    teacher's 0.7/0.2/0.1, not the labels; with the labels alone it learns class 2."""
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).random((128, *SPEC.shape)).astype(np.float32)
    labels = np.full(128, 2)
    answers = {}
    for alpha in (0.0, 1.0):
        student = build_model(SPEC, augmentation=(), width=8)
        model = Distiller(student, _constant_teacher(), temperature=1.0, alpha=alpha)
        compile_model(model, 1e-2)
        model.fit(images, labels, epochs=15, batch_size=32, verbose=0)
        answers[alpha] = student_of(model).predict(images, verbose=0).mean(axis=0)
    np.testing.assert_allclose(answers[0.0], TARGET, atol=0.08)
    assert answers[1.0].argmax() == 2 and answers[1.0][2] > 0.9


def test_a_pushed_version_is_loaded_back_as_the_teacher(tmp_path):
    config = {"backbone": "cnn", "width": 8, "image_height": 8, "image_width": 8,
              "image_channels": 1, "num_classes": 3, "augmentation": ["flip"]}
    model = build_model(SPEC, augmentation=("flip",), width=8)
    export_warm_start(model, str(tmp_path), config, None)
    teacher, identity = served_teacher(str(tmp_path))
    images = np.random.default_rng(1).random((4, *SPEC.shape)).astype(np.float32)
    np.testing.assert_allclose(teacher(images), model(images), atol=1e-6)
    words = teacher_line(dict(identity, temperature=4.0, alpha=0.5))
    assert str(tmp_path) in words and "temperature 4" in words
    with pytest.raises(ValueError, match="warm_start"):
        served_teacher(str(tmp_path / "elsewhere"))
