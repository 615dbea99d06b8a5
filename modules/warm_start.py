"""Warm start: a new model starts from the served model's weights when their architectures
match; the Trainer exports the weights and architecture a later warm start needs."""
from __future__ import annotations

import os
import tempfile

import absl.logging
import tensorflow as tf

from domain.features import RESULT_FILE, WARM_START_DIR
from modules.json_files import read_json, write_json

WEIGHTS_FILE, ARCHITECTURE_FILE = "model.weights.h5", "architecture.json"

# The options that shape the weights: equal values, loadable weights.
ARCHITECTURE_KEYS = ("backbone", "width", "image_height", "image_width", "image_channels",
                     "num_classes", "augmentation")


def architecture(config: dict) -> dict:
    return {key: config[key] for key in ARCHITECTURE_KEYS}


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
        served = read_json(os.path.join(source, ARCHITECTURE_FILE))
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
    write_json(os.path.join(target, ARCHITECTURE_FILE), architecture(config))
    if result is not None:
        write_json(os.path.join(target, RESULT_FILE), result)
