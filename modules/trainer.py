"""Trainer's ``run_fn``: train under a ``tf.distribute`` strategy, then export (modules.export)."""
from __future__ import annotations

import json
import os
import tempfile

import absl.logging
import keras
import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import DataAccessor, FnArgs
from tfx_bsl.tfxio import dataset_options

from modules.export import TFLITE_PATH, ServingModule, class_names, tflite_bytes
from modules.features import (LABEL_XF, RESULT_FILE, TRAINING_FILE, WARM_START_DIR,
                               ImageSpec)
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


def keras_api(kind: str):
    """Keras 2 (tf_keras) for multi-worker training, which Keras 3 cannot ``fit``; else Keras 3."""
    if kind == "multi_worker":
        import tf_keras
        return tf_keras
    return keras


def is_chief(tf_config: str | None) -> bool:
    """Whether this task writes the model: the chief, else worker 0, else a single task."""
    config = json.loads(tf_config) if tf_config else {}
    task, cluster = config.get("task", {}), config.get("cluster", {})
    if not task:
        return True
    if "chief" in cluster:
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


def make_strategy(kind: str, devices: list[str]) -> tf.distribute.Strategy:
    """The strategy of ``kind`` over ``devices`` (local GPUs; empty means the CPU)."""
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices or None)
    return tf.distribute.OneDeviceStrategy(devices[0] if devices else "/cpu:0")


def input_fn(files: list[str], data_accessor: DataAccessor,
             tf_transform_output: tft.TFTransformOutput, batch_size: int, cache: bool = False,
             seed: int | None = None) -> tf.data.Dataset:
    """Shuffled batches of ``({image_xf}, label_xf)`` from transformed examples, repeated.

    tfxio reads with parallel interleave and parsing (AUTOTUNE) and prefetches; with ``cache``
    the parsed examples are kept in memory after the first epoch and reshuffled every epoch.
    """
    schema = tf_transform_output.transformed_metadata.schema
    if not cache:
        return data_accessor.tf_dataset_factory(files, dataset_options.TensorFlowDatasetOptions(
            batch_size=batch_size, label_key=LABEL_XF, shuffle_seed=seed), schema)
    dataset = data_accessor.tf_dataset_factory(files, dataset_options.TensorFlowDatasetOptions(
        batch_size=256, label_key=LABEL_XF, num_epochs=1, shuffle=False), schema)
    return (dataset.cache().unbatch().shuffle(10_000, seed=seed).batch(batch_size).repeat()
            .prefetch(tf.data.AUTOTUNE))


def fits_in_memory(files: list[str], limit_mb: int) -> bool:
    """Whether the (compressed) transformed examples are under ``limit_mb`` MiB."""
    size = sum(tf.io.gfile.stat(f).length for pattern in files for f in tf.io.gfile.glob(pattern))
    return size < limit_mb * 2**20


WEIGHTS_FILE, ARCHITECTURE_FILE = "model.weights.h5", "architecture.json"

# The options that shape the weights: equal values, loadable weights.
ARCHITECTURE_KEYS = ("backbone", "image_height", "image_width", "image_channels", "num_classes",
                     "augmentation")


def architecture(config: dict) -> dict:
    return {key: config[key] for key in ARCHITECTURE_KEYS}


def _read_json(path: str) -> dict:
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _write_json(path: str, value: dict) -> None:
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)


def warm_start(model, served_dir: str | None, config: dict) -> dict:
    """Loads the served model's weights into ``model`` when its architecture matches;
    returns ``{"warm_started": bool, "reason": ...}`` (logged and exported with the model)."""
    source = os.path.join(served_dir or "", WARM_START_DIR)
    if not served_dir or not tf.io.gfile.exists(served_dir):
        result = {"warm_started": False, "reason": "nothing is served yet: trained from scratch"}
    elif not tf.io.gfile.exists(os.path.join(source, WEIGHTS_FILE)):
        result = {"warm_started": False, "reason": "the served model carries no warm-start "
                                                   "weights: trained from scratch"}
    else:
        served = _read_json(os.path.join(source, ARCHITECTURE_FILE))
        differences = {k: (served.get(k), v) for k, v in architecture(config).items()
                       if served.get(k) != v}
        if differences:
            result = {"warm_started": False, "reason": "the served model's architecture differs ("
                      + ", ".join(f"{k}: served {a!r}, now {b!r}"
                                  for k, (a, b) in differences.items())
                      + "): trained from scratch"}
        else:
            result = _load_weights(model, os.path.join(source, WEIGHTS_FILE), served_dir)
    absl.logging.log(absl.logging.INFO if result["warm_started"] else absl.logging.WARNING,
                     "Warm start: %s", result["reason"])
    return result


def _load_weights(model, path: str, served_dir: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, WEIGHTS_FILE)
        tf.io.gfile.copy(path, local)
        try:
            model.load_weights(local)
        except ValueError as err:  # same options, other layers (e.g. a new release's model)
            return {"warm_started": False, "reason": "the served model's weights do not fit "
                    f"this model ({str(err).splitlines()[0]}): trained from scratch"}
    return {"warm_started": True, "reason": f"initialised from {served_dir}"}


def export_warm_start(model, out_dir: str, config: dict, result: dict | None) -> None:
    """The weights and architecture a later warm start needs, and how this one went."""
    target = os.path.join(out_dir, WARM_START_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, WEIGHTS_FILE)
        model.save_weights(local)
        tf.io.gfile.makedirs(target)
        tf.io.gfile.copy(local, os.path.join(target, WEIGHTS_FILE), overwrite=True)
    _write_json(os.path.join(target, ARCHITECTURE_FILE), architecture(config))
    if result is not None:
        _write_json(os.path.join(target, RESULT_FILE), result)


def run_fn(fn_args: FnArgs) -> None:
    config = fn_args.custom_config
    spec = ImageSpec.from_custom_config(config)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    names = class_names(config, tf_transform_output)
    tf_config = os.environ.get("TF_CONFIG")
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    kind = strategy_kind(config["strategy"], len(gpus), tf_config)
    api = keras_api(kind)
    api.utils.set_random_seed(config["seed"])
    if gpus and config["mixed_precision"]:
        api.mixed_precision.set_global_policy("mixed_float16")
    strategy = make_strategy(kind, gpus)
    batch_size = config["batch_size"] * strategy.num_replicas_in_sync
    cache = fits_in_memory(fn_args.train_files, config["cache_input_mb"])
    absl.logging.info("Training with %s on %d replica(s) (GPUs: %s), Keras %s, global batch %d, "
                      "precision %s, in-memory input cache %s", type(strategy).__name__,
                      strategy.num_replicas_in_sync, gpus or "none", api.__version__, batch_size,
                      api.mixed_precision.global_policy().name, cache)
    train = input_fn(fn_args.train_files, fn_args.data_accessor, tf_transform_output,
                     batch_size, cache, config["seed"])
    evaluation = input_fn(fn_args.eval_files, fn_args.data_accessor, tf_transform_output,
                          batch_size, cache, config["seed"])
    with strategy.scope():
        model = build_model(spec, config["learning_rate"], tuple(config["augmentation"]),
                            config["backbone"], config["pretrained_weights"], api)
        warm = warm_start(model, fn_args.base_model, config) if config["warm_start"] else None
    fit = dict(validation_data=evaluation, validation_steps=fn_args.eval_steps, verbose=2,
               steps_per_epoch=max(1, fn_args.train_steps // config["epochs"]),
               callbacks=[api.callbacks.TensorBoard(log_dir=fn_args.model_run_dir),
                          api.callbacks.EarlyStopping(
                              monitor="val_loss", restore_best_weights=True,
                              patience=config["early_stopping_patience"])])
    model.fit(train, epochs=config["epochs"], **fit)
    if config["backbone"] != "cnn" and config["fine_tune_layers"] and config["fine_tune_epochs"]:
        absl.logging.info("Fine-tuning the top %d backbone layers", config["fine_tune_layers"])
        with strategy.scope():
            unfreeze_top(model, config["fine_tune_layers"], config["learning_rate"] / 10, api)
        model.fit(train, epochs=config["fine_tune_epochs"], **fit)
    # Every worker saves (collective ops need all of them); only the chief's copy is the model.
    out_dir = fn_args.serving_model_dir if is_chief(tf_config) else tempfile.mkdtemp()
    ServingModule(model, tf_transform_output, spec, names).save(out_dir)
    export_warm_start(model, out_dir, config, warm)
    _write_json(os.path.join(out_dir, TRAINING_FILE), dict(config, train_steps=fn_args.train_steps))
    if config["tflite"]:
        path = os.path.join(out_dir, TFLITE_PATH)
        tf.io.gfile.makedirs(os.path.dirname(path))
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(tflite_bytes(model, spec, config["tflite"]))
