"""The small CNN of Keras' image classification tutorial, shared by the stock TFX module and
the plain Keras recipe (the same model on both stock sides)."""
from tensorflow import keras  # as the examples and tutorials: tf.keras

IMAGE_SIZE = 64  # pixels per side, as the project's run is configured in bench_compare
NUM_CLASSES = 3


def build_cnn(inputs, scale: float = 1.0) -> keras.Model:
    """Rescaling, three conv/pool blocks, a dense layer, logits (the tutorial's model)."""
    image = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs
    x = keras.layers.Reshape((IMAGE_SIZE, IMAGE_SIZE, 3))(image)
    x = keras.layers.Rescaling(scale)(x)
    for filters in (16, 32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Dense(128, activation="relu")(keras.layers.Flatten()(x))
    model = keras.Model(inputs=inputs, outputs=keras.layers.Dense(NUM_CLASSES)(x))
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model
