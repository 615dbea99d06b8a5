"""The Trainer's and the Tuner's ``tf.distribute`` strategy, Keras API, seeds and precision."""
from __future__ import annotations

import json
import os

import absl.logging
import keras
import tensorflow as tf


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
    """The strategy of ``kind`` over ``devices`` (local GPUs; empty means the CPU).

    ``one_device`` is TensorFlow's default strategy (one replica on the first GPU, else the
    CPU): under Keras 3, ``OneDeviceStrategy`` made each CPU step 5x slower (103 vs 21 ms for
    the default model at 28x28, batch 32, on this project's 2-core machine)."""
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices or None)
    return tf.distribute.get_strategy()


def setup_training(config: dict):
    """``(TF_CONFIG, Keras API, strategy)`` for this machine, seeds and precision set."""
    tf_config = os.environ.get("TF_CONFIG")
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    kind = strategy_kind(config["strategy"], len(gpus), tf_config)
    api = keras_api(kind)
    api.utils.set_random_seed(config["seed"])
    if gpus and config["mixed_precision"]:
        api.mixed_precision.set_global_policy("mixed_float16")
    strategy = make_strategy(kind, gpus)
    absl.logging.info("Training with %s on %d replica(s) (GPUs: %s), Keras %s, precision %s",
                      type(strategy).__name__, strategy.num_replicas_in_sync, gpus or "none",
                      api.__version__, api.mixed_precision.global_policy().name)
    return tf_config, api, strategy
