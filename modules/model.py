"""The Keras image classifier (built by the Trainer under its distribution strategy).

Backbones: a small CNN (default, fast on CPU) or keras.applications MobileNetV2 /
EfficientNetB0 for transfer learning (frozen first; ``unfreeze_top`` for fine-tuning).
"""
from __future__ import annotations

import keras

from modules.features import BACKBONES, IMAGE_XF, ImageSpec

AUGMENTATION_LAYERS = {
    "flip": lambda: keras.layers.RandomFlip("horizontal"),
    "rotate": lambda: keras.layers.RandomRotation(0.05),
    "zoom": lambda: keras.layers.RandomZoom(0.1),
}
# keras.applications constructor, and the (scale, offset) taking pixels in [0, 1] to its input.
APPLICATIONS = {
    "mobilenet_v2": (keras.applications.MobileNetV2, 2.0, -1.0),
    "efficientnet_b0": (keras.applications.EfficientNetB0, 255.0, 0.0),
}
BACKBONE_NAME = "backbone"


def _small_cnn(x):
    for filters in (32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(2, padding="same")(x)
    return keras.layers.Dense(128, activation="relu")(keras.layers.Flatten()(x))


def _application(x, backbone: str, spec: ImageSpec, weights: str | None):
    constructor, scale, offset = APPLICATIONS[backbone]
    if spec.channels == 1:
        x = keras.layers.Concatenate()([x, x, x])
    base = constructor(include_top=False, weights=weights or None, pooling="avg",
                       input_shape=(spec.height, spec.width, 3), name=BACKBONE_NAME)
    base.trainable = False
    return base(keras.layers.Rescaling(scale, offset)(x), training=False)


def compile_model(model: keras.Model, learning_rate: float) -> None:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def build_model(spec: ImageSpec, learning_rate: float = 1e-3, augmentation: tuple[str, ...] = (),
                backbone: str = "cnn", weights: str | None = None) -> keras.Model:
    """``image_xf`` pixels in [0, 1] -> class probabilities (float32 even under mixed precision).

    ``augmentation`` names in-model layers (flip/rotate/zoom) that act only in training;
    ``weights`` is a local weights file for an application backbone (or ``imagenet``).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    inputs = keras.Input(shape=spec.shape, name=IMAGE_XF)
    x = inputs
    for name in augmentation:
        x = AUGMENTATION_LAYERS[name]()(x)
    x = _small_cnn(x) if backbone == "cnn" else _application(x, backbone, spec, weights)
    x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(spec.num_classes, activation="softmax", dtype="float32",
                                 name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=f"{backbone}_classifier")
    compile_model(model, learning_rate)
    return model


def unfreeze_top(model: keras.Model, layers: int, learning_rate: float) -> None:
    """Make the top ``layers`` of the backbone trainable (batch norms stay frozen), recompile."""
    base = model.get_layer(BACKBONE_NAME)
    base.trainable = True
    for layer in base.layers[:-layers]:
        layer.trainable = False
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    compile_model(model, learning_rate)
