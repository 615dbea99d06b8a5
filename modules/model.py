"""The Keras image classifier (built by the Trainer under its distribution strategy).

Backbones: a small CNN (default, fast on CPU, chosen by experiments on photo-like images;
see the README) or keras.applications MobileNetV2 / EfficientNetB0 for transfer learning
(frozen first; ``unfreeze_top`` for fine-tuning).
``api`` is Keras 3 (``keras``) or Keras 2 (``tf_keras``): Keras 3 cannot ``fit`` under
MultiWorkerMirroredStrategy (keras-team/keras#20585), so multi-worker training uses tf_keras.
"""
from __future__ import annotations

import math

import keras
import tensorflow as tf

from domain.features import (AUGMENTATIONS, BACKBONES, DEFAULT_AUGMENTATION, IMAGE_XF,
                               LR_SCHEDULES, ImageSpec)

def _random_invert(x):
    """Contrast flip of [0, 1] pixels for half the batch: shapes, not brightness."""
    flip = tf.random.uniform([tf.shape(x)[0], 1, 1, 1]) < 0.5
    return tf.where(flip, 1.0 - x, x)


def _random_mirror(x):
    """Left-right mirror for half the batch."""
    mirror = tf.random.uniform([tf.shape(x)[0], 1, 1, 1]) < 0.5
    return tf.where(mirror, tf.reverse(x, axis=[2]), x)


def _random_colour(x):
    """RGB only: a random channel order per image, and grayscale for half the batch, so a
    class cannot be told by its colours alone."""
    if x.shape[-1] != 3:
        return x
    batch = tf.shape(x)[0]
    order = tf.argsort(tf.random.uniform([batch, 3]), axis=-1)
    x = tf.gather(x, order, axis=3, batch_dims=1)
    gray = tf.random.uniform([batch, 1, 1, 1]) < 0.5
    return tf.where(gray, tf.reduce_mean(x, axis=-1, keepdims=True), x)


def _training_only(api, name: str, fn):
    """A layer applying ``fn`` in training and passing inputs through at inference (no random
    op in the inference graph, unlike Keras's random layers: TFLite converts it)."""
    def call(self, x, training=None):
        return fn(x) if training else x
    return type(name, (api.layers.Layer,), {"call": call})(name=name.lower())


AUGMENTATION_LAYERS = {
    "flip": lambda api: _training_only(api, "RandomFlip", _random_mirror),
    "rotate": lambda api: api.layers.RandomRotation(0.05),
    "zoom": lambda api: api.layers.RandomZoom(0.1),
    "colour": lambda api: _training_only(api, "RandomColour", _random_colour),
    "invert": lambda api: _training_only(api, "RandomInvert", _random_invert),
}
assert tuple(AUGMENTATION_LAYERS) == AUGMENTATIONS
# keras.applications constructor, and the (scale, offset) taking pixels in [0, 1] to its input.
APPLICATIONS = {
    "mobilenet_v2": ("MobileNetV2", 2.0, -1.0),
    "efficientnet_b0": ("EfficientNetB0", 255.0, 0.0),
}


def _standardise(x):
    """Per image: zero mean, unit variance over all pixels and channels (lighting and
    exposure invariance; the floor keeps flat images finite)."""
    mean, variance = tf.nn.moments(x, axes=[1, 2, 3], keepdims=True)
    # A product, not a division: full-integer TFLite's DIV refuses a divisor whose int8 code
    # is 0 (a standard deviation at the middle of its calibrated range, about 0.2).
    return (x - mean) * tf.math.rsqrt(tf.maximum(variance, (1.0 / 255) ** 2))


def stem_stride(spec: ImageSpec) -> int:
    """The first convolution's stride: 1 below 24 px, 2 up to 127 px, else 4 (CPU-sized)."""
    side = min(spec.height, spec.width)
    return 1 if side < 24 else 2 if side < 128 else 4


def _cnn(x, spec: ImageSpec, width: int, api):
    """Standardised input, a strided stem that sees edges of either polarity (the absolute
    response: a dark shape on light and a light one on dark look alike), three
    conv-maxpool-GroupNorm-ReLU blocks of ``width``, 2x and 4x filters, and global max pooling
    ("is the pattern anywhere").

    GroupNorm, not BatchNorm: statistics per image, so training with augmentation and
    inference without it see the same normalisation. In the blocks it follows the pooling, on
    a quarter of the pixels (a CPU step took about 0.9x the time of normalising before
    pooling, with the same accuracy on photo-like shapes, when measured for issue 24)."""
    def conv(x, filters, stride=1, response=None, pool=False):
        x = api.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        x = response(x) if response else x
        x = api.layers.MaxPooling2D(2, padding="same")(x) if pool else x
        return api.layers.ReLU()(api.layers.GroupNormalization(groups=8)(x))

    x = conv(api.layers.Lambda(_standardise, name="standardise")(x), width, stem_stride(spec),
             api.layers.Lambda(tf.abs, name="either_polarity"))
    for filters in (width, 2 * width, 4 * width):
        x = conv(x, filters, pool=True)
    return api.layers.GlobalMaxPooling2D()(x)


def _application(x, backbone: str, spec: ImageSpec, weights: str | None, api):
    constructor, scale, offset = APPLICATIONS[backbone]
    if spec.channels == 1:
        x = api.layers.Concatenate()([x, x, x])
    base = getattr(api.applications, constructor)(
        include_top=False, weights=weights or None, pooling="avg",
        input_shape=(spec.height, spec.width, 3))
    base.trainable = False
    return base(api.layers.Rescaling(scale, offset)(x), training=False)


def warmup_cosine(api=keras):
    """The ``WarmupCosine`` schedule class for ``api`` (Keras 3 or tf_keras)."""
    base = api.optimizers.schedules.LearningRateSchedule

    class WarmupCosine(base):
        """Linear warm-up over the first tenth of ``steps`` from 1% of ``peak`` to ``peak``,
        then cosine decay to 1% of it at ``steps``. ``anneal(step, left)`` reschedules the
        decay to end ``left`` steps after ``step``, from the rate at ``step`` (the Trainer's
        early end: ``modules.budget.Convergence``)."""

        def __init__(self, peak: float, steps: int):
            self.peak, self.steps, self.warmup = float(peak), int(steps), max(1, steps // 10)
            # Where the decay starts (step, rate) and ends: variables the Trainer can move.
            self.start = tf.Variable(float(self.warmup), trainable=False, name="decay_start")
            self.start_rate = tf.Variable(self.peak, trainable=False, name="decay_start_rate")
            self.end = tf.Variable(float(max(steps, self.warmup + 1)), trainable=False,
                                   name="decay_end")

        def __call__(self, step):
            step, floor = tf.cast(step, tf.float32), self.peak / 100
            rising = floor + (self.peak - floor) * step / self.warmup
            done = tf.clip_by_value((step - self.start) / (self.end - self.start), 0.0, 1.0)
            decay = floor + (self.start_rate - floor) * 0.5 * (1.0 + tf.cos(math.pi * done))
            return tf.where(step < self.warmup, rising, decay)

        def anneal(self, step: int, left: int) -> None:
            if step < self.warmup or step + left >= float(self.end.numpy()):
                return
            self.start_rate.assign(self(step))
            self.start.assign(float(step))
            self.end.assign(float(step + max(1, left)))

        def get_config(self):
            return {"peak": self.peak, "steps": self.steps}

    return WarmupCosine


def learning_rate(schedule: str, peak: float, steps: int, api=keras):
    """``warmup_cosine``: ``warmup_cosine(api)`` over ``steps``. ``plateau`` and ``constant``:
    ``peak`` throughout (for ``plateau`` the Trainer's ReduceLROnPlateau callback lowers it)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if schedule != "warmup_cosine":
        return peak
    return warmup_cosine(api)(peak, steps)


def compile_model(model, learning_rate, api=keras) -> None:
    """Adam at ``learning_rate`` (a number or a schedule), sparse cross-entropy, accuracy."""
    model.compile(optimizer=api.optimizers.Adam(learning_rate),
                  loss=api.losses.SparseCategoricalCrossentropy(),
                  metrics=[api.metrics.SparseCategoricalAccuracy(name="accuracy")])


def build_model(spec: ImageSpec, learning_rate=1e-3,
                augmentation: tuple[str, ...] = DEFAULT_AUGMENTATION, backbone: str = "cnn",
                weights: str | None = None, api=keras, width: int = 32, dropout: float = 0.2):
    """``image_xf`` pixels in [0, 1] -> class probabilities (float32 even under mixed precision).

    ``augmentation`` names in-model layers (``AUGMENTATIONS``) that act only in training;
    ``width`` is the CNN's first filter count; ``weights`` is a local weights file for an
    application backbone (or ``imagenet``); ``learning_rate`` a number or a schedule.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    inputs = api.Input(shape=spec.shape, name=IMAGE_XF)
    x = inputs
    for name in augmentation:
        x = AUGMENTATION_LAYERS[name](api)(x)
    if backbone == "cnn":
        x = _cnn(x, spec, width, api)
    else:
        x = _application(x, backbone, spec, weights, api)
    x = api.layers.Dropout(dropout)(x)
    outputs = api.layers.Dense(spec.num_classes, activation="softmax", dtype="float32",
                               name="probabilities")(x)
    model = api.Model(inputs, outputs, name=f"{backbone}_classifier")
    compile_model(model, learning_rate, api)
    return model


def model_for(config: dict, rate, api=keras):
    """The model of the Trainer's ``config``, compiled with the learning rate ``rate`` (a
    number or a schedule)."""
    return build_model(ImageSpec.from_custom_config(config), rate,
                       tuple(config["augmentation"]), config["backbone"],
                       config["pretrained_weights"], api, config["width"], config["dropout"])


def backbone_of(model, api=keras):
    """The nested keras.applications model inside ``model``."""
    return next(layer for layer in model.layers if isinstance(layer, api.Model))


def unfreeze_top(model, layers: int, learning_rate: float, api=keras) -> None:
    """Make the top ``layers`` of the backbone trainable (batch norms stay frozen), recompile."""
    base = backbone_of(model, api)
    base.trainable = True
    for layer in base.layers[:-layers]:
        layer.trainable = False
    for layer in base.layers:
        if isinstance(layer, api.layers.BatchNormalization):
            layer.trainable = False
    compile_model(model, learning_rate, api)
