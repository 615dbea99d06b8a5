"""Knowledge distillation: the student learns from the labels and from a teacher's softened
probabilities (Hinton et al. 2015). The teacher is a pushed version (its exported warm-start
weights and architecture) or a larger model trained first in the same run; the student alone
is exported, gated and pushed, and the teacher's identity goes beside it (``TEACHER_FILE``)."""
from __future__ import annotations

import os
import tempfile
import time

import keras
import tensorflow as tf

from domain.features import BACKBONES, WARM_START_DIR, ImageSpec
from modules.json_files import read_json
from modules.model import build_model, compile_model, model_for

EPSILON = 1e-7  # probabilities -> log space without log(0)


def soften(probabilities: tf.Tensor, temperature: float) -> tf.Tensor:
    """Log-probabilities at ``temperature``: softmax(log p / T), in log space. The models end
    in a softmax, so log p are their logits up to a constant the softmax ignores."""
    return tf.nn.log_softmax(tf.math.log(probabilities + EPSILON) / temperature, axis=-1)


def distillation_loss(teacher: tf.Tensor, student: tf.Tensor, temperature: float,
                      sample_weight: tf.Tensor | None = None) -> tf.Tensor:
    """KL(teacher_T || student_T) × T² (the T² keeps its gradients' scale as T changes),
    averaged over the batch (weighted by ``sample_weight``, e.g. class weights)."""
    teacher_log, student_log = soften(teacher, temperature), soften(student, temperature)
    kl = tf.reduce_sum(tf.exp(teacher_log) * (teacher_log - student_log), axis=-1)
    if sample_weight is not None:
        weight = tf.cast(tf.reshape(sample_weight, [-1]), kl.dtype)
        kl = tf.reduce_sum(kl * weight) / tf.maximum(tf.reduce_sum(weight), EPSILON)
    else:
        kl = tf.reduce_mean(kl)
    return kl * temperature ** 2


class Distiller(keras.Model):
    """The student, trained on ``alpha`` × its compiled loss (the labels) + (1 - ``alpha``) ×
    ``distillation_loss`` to the frozen teacher. Evaluation (validation rounds) reports the
    labels' loss alone, comparable with an undistilled model's."""

    def __init__(self, student: keras.Model, teacher: keras.Model, temperature: float,
                 alpha: float):
        super().__init__()
        self.student, self.teacher = student, teacher
        self.teacher.trainable = False
        self.temperature, self.alpha = temperature, alpha

    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        labels = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        if not training:
            return labels
        teacher = self.teacher(x, training=False)
        return self.alpha * labels + (1 - self.alpha) * distillation_loss(
            tf.cast(teacher, tf.float32), tf.cast(y_pred, tf.float32), self.temperature,
            sample_weight)


def student_of(model):
    """The model to export: a ``Distiller``'s student, any other model itself."""
    return model.student if isinstance(model, Distiller) else model


def served_teacher(version_dir: str) -> tuple[keras.Model, dict]:
    """The pushed version in ``version_dir`` as a Keras model, from the warm-start weights
    and architecture exported beside it (``modules.warm_start``)."""
    from modules.warm_start import ARCHITECTURE_FILE, WEIGHTS_FILE
    source = os.path.join(version_dir, WARM_START_DIR)
    if not tf.io.gfile.exists(os.path.join(source, WEIGHTS_FILE)):
        raise ValueError(f"distill_teacher={version_dir}: no {WARM_START_DIR}/{WEIGHTS_FILE} "
                         "there (a version this pipeline pushed is needed)")
    arch = read_json(os.path.join(source, ARCHITECTURE_FILE))
    teacher = build_model(ImageSpec("image", "label", arch["image_height"], arch["image_width"],
                                    arch["image_channels"], arch["num_classes"]),
                          augmentation=tuple(arch["augmentation"]), backbone=arch["backbone"],
                          width=arch["width"])
    with tempfile.TemporaryDirectory() as tmp:  # h5 reads local files only
        local = os.path.join(tmp, WEIGHTS_FILE)
        tf.io.gfile.copy(os.path.join(source, WEIGHTS_FILE), local)
        teacher.load_weights(local)
    return teacher, {"source": "served version", "path": version_dir, **arch}


def teacher_config(config: dict) -> dict:
    """The Trainer's config for a teacher trained in the run: ``distill_teacher`` is
    ``backbone[:width]`` (e.g. ``cnn:96``, ``efficientnet_b0``)."""
    backbone, _, width = config["distill_teacher"].partition(":")
    return dict(config, backbone=backbone, width=int(width or config["width"]))


def is_trained_teacher(teacher: str) -> bool:
    """Whether ``distill_teacher`` names a model to train in the run (else a version dir)."""
    return teacher.partition(":")[0] in BACKBONES


def trained_teacher(config: dict, schedule, api, inputs, strategy,
                    log_dir: str) -> tuple[keras.Model, dict]:
    """A teacher of ``teacher_config`` trained first, as the Trainer trains (its own
    validation rounds and budget; TensorBoard logs under ``log_dir``/teacher)."""
    from modules.budget import Convergence
    from modules.training import train
    settings = teacher_config(config)
    with strategy.scope():
        teacher = model_for(settings, schedule, api)
    convergence = Convergence(inputs.steps, inputs.round_steps, settings["target_accuracy"],
                              time.perf_counter(), schedule)
    train(teacher, inputs, settings, os.path.join(log_dir, "teacher"), strategy, api,
          convergence)
    accuracy = teacher.evaluate(inputs.validation, steps=inputs.validation_batches, verbose=0,
                                return_dict=True)["accuracy"]
    return teacher, {"source": "trained in this run", "backbone": settings["backbone"],
                     "width": settings["width"], "validation_accuracy": accuracy}


def distiller(student, config: dict, schedule, api, inputs, strategy,
              log_dir: str) -> tuple[Distiller, dict]:
    """``student`` wrapped with its teacher (``distill_teacher``: a version directory, or
    ``backbone[:width]`` trained first, ``trained_teacher``), compiled at ``schedule``
    under ``strategy``; and the teacher's identity, temperature and mixing weight."""
    if api is not keras:
        raise ValueError("distillation needs Keras 3: not with the multi_worker strategy")
    if is_trained_teacher(config["distill_teacher"]):
        teacher, identity = trained_teacher(config, schedule, api, inputs, strategy, log_dir)
    else:
        teacher, identity = served_teacher(config["distill_teacher"])
    with strategy.scope():
        model = Distiller(student, teacher, config["distill_temperature"],
                          config["distill_alpha"])
        compile_model(model, schedule, api)
    return model, dict(identity, temperature=config["distill_temperature"],
                       alpha=config["distill_alpha"])
