"""Trainer's ``run_fn``: train under a ``tf.distribute`` strategy, then export (modules.export)."""
from __future__ import annotations

import json
import os

import absl.logging
import keras
import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import DataAccessor, FnArgs
from tfx_bsl.tfxio import dataset_options

from modules.export import TFLITE_PATH, ServingModule, class_names, tflite_bytes
from modules.features import LABEL_XF, ImageSpec
from modules.model import build_model, unfreeze_top


def strategy_kind(requested: str, num_gpus: int, tf_config: str | None) -> str:
    """``auto``: multi_worker when TF_CONFIG describes several tasks, mirrored on several
    GPUs, else one_device. Any other value is taken as asked."""
    if requested != "auto":
        return requested
    cluster = json.loads(tf_config).get("cluster", {}) if tf_config else {}
    if sum(len(tasks) for tasks in cluster.values()) > 1:
        return "multi_worker"
    return "mirrored" if num_gpus > 1 else "one_device"


def make_strategy(kind: str, devices: list[str]) -> tf.distribute.Strategy:
    """The strategy of ``kind`` over ``devices`` (local GPUs; empty means the CPU)."""
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices or None)
    return tf.distribute.OneDeviceStrategy(devices[0] if devices else "/cpu:0")


def input_fn(files: list[str], data_accessor: DataAccessor,
             tf_transform_output: tft.TFTransformOutput, batch_size: int) -> tf.data.Dataset:
    """Batches of ``({image_xf}, label_xf)`` from transformed examples, repeated."""
    return data_accessor.tf_dataset_factory(
        files,
        dataset_options.TensorFlowDatasetOptions(batch_size=batch_size, label_key=LABEL_XF),
        tf_transform_output.transformed_metadata.schema).repeat().prefetch(tf.data.AUTOTUNE)


def run_fn(fn_args: FnArgs) -> None:
    config = fn_args.custom_config
    spec = ImageSpec.from_custom_config(config)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    names = class_names(config, tf_transform_output)
    keras.utils.set_random_seed(config["seed"])
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    kind = strategy_kind(config["strategy"], len(gpus), os.environ.get("TF_CONFIG"))
    if gpus and config["mixed_precision"]:
        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = make_strategy(kind, gpus)
    batch_size = config["batch_size"] * strategy.num_replicas_in_sync
    absl.logging.info("Training with %s on %d replica(s) (GPUs: %s), global batch %d, "
                      "precision policy %s", type(strategy).__name__,
                      strategy.num_replicas_in_sync, gpus or "none", batch_size,
                      keras.mixed_precision.global_policy().name)
    train = input_fn(fn_args.train_files, fn_args.data_accessor, tf_transform_output, batch_size)
    evaluation = input_fn(fn_args.eval_files, fn_args.data_accessor, tf_transform_output,
                          batch_size)
    with strategy.scope():
        model = build_model(spec, config["learning_rate"], tuple(config["augmentation"]),
                            config["backbone"], config["pretrained_weights"])
    fit = dict(validation_data=evaluation, validation_steps=fn_args.eval_steps, verbose=2,
               steps_per_epoch=max(1, fn_args.train_steps // config["epochs"]),
               callbacks=[keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir),
                          keras.callbacks.EarlyStopping(
                              monitor="val_loss", restore_best_weights=True,
                              patience=config["early_stopping_patience"])])
    model.fit(train, epochs=config["epochs"], **fit)
    if config["backbone"] != "cnn" and config["fine_tune_layers"] and config["fine_tune_epochs"]:
        absl.logging.info("Fine-tuning the top %d backbone layers", config["fine_tune_layers"])
        with strategy.scope():
            unfreeze_top(model, config["fine_tune_layers"], config["learning_rate"] / 10)
        model.fit(train, epochs=config["fine_tune_epochs"], **fit)
    ServingModule(model, tf_transform_output, spec, names).save(
        fn_args.serving_model_dir)
    if config["tflite"]:
        path = os.path.join(fn_args.serving_model_dir, TFLITE_PATH)
        tf.io.gfile.makedirs(os.path.dirname(path))
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(tflite_bytes(model, spec, config["tflite"]))
