"""The Keras image classifier (built by the Trainer under its distribution strategy).

Backbones: a small CNN (default, fast on CPU) or keras.applications MobileNetV2 /
EfficientNetB0 for transfer learning (frozen first; ``unfreeze_top`` for fine-tuning).
``api`` is Keras 3 (``keras``) or Keras 2 (``tf_keras``): Keras 3 cannot ``fit`` under
MultiWorkerMirroredStrategy (keras-team/keras#20585), so multi-worker training uses tf_keras.
"""
from __future__ import annotations

import keras

from modules.features import BACKBONES, IMAGE_XF, ImageSpec

AUGMENTATION_LAYERS = {
    "flip": lambda api: api.layers.RandomFlip("horizontal"),
    "rotate": lambda api: api.layers.RandomRotation(0.05),
    "zoom": lambda api: api.layers.RandomZoom(0.1),
}
# keras.applications constructor, and the (scale, offset) taking pixels in [0, 1] to its input.
APPLICATIONS = {
    "mobilenet_v2": ("MobileNetV2", 2.0, -1.0),
    "efficientnet_b0": ("EfficientNetB0", 255.0, 0.0),
}


def _small_cnn(x, api):
    for filters in (32, 64):
        x = api.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = api.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = api.layers.MaxPooling2D(2, padding="same")(x)
    return api.layers.Dense(128, activation="relu")(api.layers.Flatten()(x))


def _application(x, backbone: str, spec: ImageSpec, weights: str | None, api):
    constructor, scale, offset = APPLICATIONS[backbone]
    if spec.channels == 1:
        x = api.layers.Concatenate()([x, x, x])
    base = getattr(api.applications, constructor)(
        include_top=False, weights=weights or None, pooling="avg",
        input_shape=(spec.height, spec.width, 3))
    base.trainable = False
    return base(api.layers.Rescaling(scale, offset)(x), training=False)


def compile_model(model, learning_rate: float, api=keras) -> None:
    model.compile(optimizer=api.optimizers.Adam(learning_rate),
                  loss=api.losses.SparseCategoricalCrossentropy(),
                  metrics=[api.metrics.SparseCategoricalAccuracy(name="accuracy")])


def build_model(spec: ImageSpec, learning_rate: float = 1e-3, augmentation: tuple[str, ...] = (),
                backbone: str = "cnn", weights: str | None = None, api=keras):
    """``image_xf`` pixels in [0, 1] -> class probabilities (float32 even under mixed precision).

    ``augmentation`` names in-model layers (flip/rotate/zoom) that act only in training;
    ``weights`` is a local weights file for an application backbone (or ``imagenet``).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    inputs = api.Input(shape=spec.shape, name=IMAGE_XF)
    x = inputs
    for name in augmentation:
        x = AUGMENTATION_LAYERS[name](api)(x)
    x = _small_cnn(x, api) if backbone == "cnn" else _application(x, backbone, spec, weights, api)
    x = api.layers.Dropout(0.3)(x)
    outputs = api.layers.Dense(spec.num_classes, activation="softmax", dtype="float32",
                               name="probabilities")(x)
    model = api.Model(inputs, outputs, name=f"{backbone}_classifier")
    compile_model(model, learning_rate, api)
    return model


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
