"""The Keras image classifier (built by the Trainer under its distribution strategy)."""
from __future__ import annotations

import keras

from modules.features import IMAGE_XF, ImageSpec

AUGMENTATION_LAYERS = {
    "flip": lambda: keras.layers.RandomFlip("horizontal"),
    "rotate": lambda: keras.layers.RandomRotation(0.05),
    "zoom": lambda: keras.layers.RandomZoom(0.1),
}


def build_model(spec: ImageSpec, learning_rate: float = 1e-3,
                augmentation: tuple[str, ...] = ()) -> keras.Model:
    """A small CNN: ``image_xf`` pixels in [0, 1] -> class probabilities (float32).

    ``augmentation`` names in-model layers (flip/rotate/zoom) that act only in training.
    """
    inputs = keras.Input(shape=spec.shape, name=IMAGE_XF)
    x = inputs
    for name in augmentation:
        x = AUGMENTATION_LAYERS[name]()(x)
    for filters in (32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(2, padding="same")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    outputs = keras.layers.Dense(spec.num_classes, activation="softmax", dtype="float32",
                                 name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="image_cnn")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return model
