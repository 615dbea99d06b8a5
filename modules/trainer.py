"""Trainer's ``run_fn``: train under a ``tf.distribute`` strategy, export a servable model."""
from __future__ import annotations

import absl.logging
import keras
import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import DataAccessor, FnArgs
from tfx_bsl.tfxio import dataset_options

from modules.features import (CLASS_IDS, IMAGE_XF, LABEL_XF, PROBABILITIES, SERVING_INPUT,
                              ImageSpec)
from modules.model import build_model


def choose_strategy(devices: list[str] | None = None) -> tf.distribute.Strategy:
    """MirroredStrategy over several local devices (default: the GPUs), else one device."""
    if devices is None:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.OneDeviceStrategy(devices[0] if devices else "/cpu:0")


def input_fn(files: list[str], data_accessor: DataAccessor,
             tf_transform_output: tft.TFTransformOutput, batch_size: int) -> tf.data.Dataset:
    """Batches of ``({image_xf}, label_xf)`` from transformed examples, repeated."""
    return data_accessor.tf_dataset_factory(
        files,
        dataset_options.TensorFlowDatasetOptions(batch_size=batch_size, label_key=LABEL_XF),
        tf_transform_output.transformed_metadata.schema).repeat().prefetch(tf.data.AUTOTUNE)


class ServingModule(tf.Module):
    """Serving signature: serialized tf.Examples -> Transform graph -> model."""

    def __init__(self, model: keras.Model, tf_transform_output: tft.TFTransformOutput,
                 label_key: str):
        super().__init__()
        self.model = model
        self.tft_layer = tf_transform_output.transform_features_layer()
        self._raw_spec = {k: v for k, v in tf_transform_output.raw_feature_spec().items()
                          if k != label_key}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
    def serve_examples(self, serialized):
        features = self.tft_layer(tf.io.parse_example(serialized, self._raw_spec))
        probabilities = self.model(features[IMAGE_XF], training=False)
        return {PROBABILITIES: probabilities, CLASS_IDS: tf.argmax(probabilities, axis=-1)}


def run_fn(fn_args: FnArgs) -> None:
    config = fn_args.custom_config
    spec = ImageSpec.from_custom_config(config)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    strategy = choose_strategy()
    batch_size = config["batch_size"] * strategy.num_replicas_in_sync
    absl.logging.info("Training with %s on %d replica(s), global batch %d",
                      type(strategy).__name__, strategy.num_replicas_in_sync, batch_size)
    train = input_fn(fn_args.train_files, fn_args.data_accessor, tf_transform_output, batch_size)
    evaluation = input_fn(fn_args.eval_files, fn_args.data_accessor, tf_transform_output,
                          batch_size)
    with strategy.scope():
        model = build_model(spec, config["learning_rate"])
    epochs = config["epochs"]
    model.fit(train, epochs=epochs, steps_per_epoch=max(1, fn_args.train_steps // epochs),
              validation_data=evaluation, validation_steps=fn_args.eval_steps,
              callbacks=[keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir)], verbose=2)
    module = ServingModule(model, tf_transform_output, spec.label_key)
    tf.saved_model.save(module, fn_args.serving_model_dir,
                        signatures={"serving_default": module.serve_examples})
