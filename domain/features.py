"""Feature constants and the image spec shared by Transform, Trainer and serving."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

SPLITS = ("train", "eval")  # the data's splits: <data root>/[span-N/]<split>/
IMAGE_XF = "image_xf"
LABEL_XF = "label_xf"
PROBABILITIES = "probabilities"
CLASS_IDS = "class_ids"
CLASS_NAMES = "class_names"
CLASSES = "classes"  # the raw-bytes signature's names of all classes, one row per image
SERVING_INPUT = "examples"
RAW_INPUT = "image_bytes"
RAW_SIGNATURE = "serving_image_bytes"
TRANSFORM_SIGNATURE = "transform_features"
LABEL_VOCABULARY = "labels"
IMAGE_FORMATS = ("encoded", "raw")
LABEL_FORMATS = ("int", "string")
RESIZE_MODES = ("pad", "crop", "stretch")
BACKBONES = ("cnn", "mobilenet_v2", "efficientnet_b0")
TFLITE_MODES = ("", "float16", "dynamic_int8", "int8")
MAX_PIXELS = 50_000_000  # larger images are refused before decoding (decompression bombs)
AUGMENTATIONS = ("flip", "rotate", "zoom", "colour", "invert")
# Colour-robust by default: a class must not be learnt from its colours or brightness alone.
DEFAULT_AUGMENTATION = ("colour", "flip")
LR_SCHEDULES = ("warmup_cosine", "plateau", "constant")
CLASS_WEIGHTS = ("auto", "balanced", "none")  # the loss's class weights (modules.data)


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """Raw feature keys, the model's input image shape and how images get there."""

    image_key: str
    label_key: str
    height: int
    width: int
    channels: int
    num_classes: int
    resize_mode: str = "pad"
    max_pixels: int = MAX_PIXELS
    image_format: str = "encoded"
    label_format: str = "int"
    raw_shape: tuple[int, int, int] = (0, 0, 0)
    raw_min_value: float = 0.0
    raw_max_value: float = 255.0

    @classmethod
    def from_custom_config(cls, config: Mapping[str, Any]) -> "ImageSpec":
        return cls(image_key=config["image_key"], label_key=config["label_key"],
                   height=int(config["image_height"]), width=int(config["image_width"]),
                   channels=int(config["image_channels"]), num_classes=int(config["num_classes"]),
                   resize_mode=config["resize_mode"], max_pixels=int(config["max_pixels"]),
                   image_format=config["image_format"], label_format=config["label_format"],
                   raw_shape=tuple(int(config[f"raw_{d}"]) for d in ("height", "width",
                                                                      "channels")),
                   raw_min_value=float(config["raw_min_value"]),
                   raw_max_value=float(config["raw_max_value"]))

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.height, self.width, self.channels


# The training options a model was made with, exported beside it (TF Serving ignores
# assets.extra): the pusher compares them with the served version's.
TRAINING_FILE = "assets.extra/training.json"
CODE_FILE = "assets.extra/code.json"  # the code that trained it (modules.provenance)
# The served weights a later run can warm-start from, their architecture, and how this
# model's own warm start went.
WARM_START_DIR = "assets.extra/warm_start"
RESULT_FILE = "warm_start.json"
# The Trainer's log line per validation round (the local runner's progress shows it).
EPOCH_LOG = "Round %d/%d: loss %.4f, accuracy %.4f; validation loss %.4f, accuracy %.4f"
# Validation accuracy gains up to this are noise: the Trainer's plateau (modules.budget
# Convergence) and the rounds the local runner shows.
ACCURACY_DELTA = 0.005
# The Trainer's last line: steps run of the budget, and why it stopped (target, plateau, budget).
STOP_LOG = "Stopped after %d of %d steps: %s"
# In the Trainer's ModelRun: step budget, final eval metrics and seconds per phase.
TRAINER_SUMMARY = "trainer_summary.json"
# In the Tuner's TunerResults: its trials, best first (the file TFX's Tuner executor writes).
TUNER_RESULTS = "tuner_results.json"
