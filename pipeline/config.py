"""The pipeline's one typed configuration: defaults, environment, then command line."""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
from pathlib import Path
from typing import Any, get_type_hints

from modules.features import (AUGMENTATIONS, BACKBONES, DEFAULT_AUGMENTATION, IMAGE_FORMATS,
                              LABEL_FORMATS, LR_SCHEDULES, RESIZE_MODES, TFLITE_MODES)

ENV_PREFIX = "TFX_IMAGE_"
BEAM_MODES = ("in_process", "multi_processing")
# URI schemes TensorFlow's file system reads and writes in this image (s3:// would need
# tensorflow-io's plugins, which TensorFlow 2.21 has no release of: use a mounted volume).
OBJECT_STORES = ("gs",)
RUNNER_ONLY = {"pipeline_name", "work_dir", "data_root", "pipeline_root", "metadata_path",
               "serving_dir", "model_name", "train_steps", "eval_steps", "min_accuracy",
               "beam_mode", "beam_workers", "beam_args", "enable_cache", "id_key",
               "max_bad_image_fraction", "max_regression", "min_class_recall",
               "keep_versions", "spans", "schema_path", "allowed_anomalies", "label_drift_threshold",
               "size_drift_threshold", "size_keys", "kfp_image", "kfp_package", "trainer_gpus",
               "gpu_type", "gpu_node_selector", "trainer_cpu", "trainer_memory", "data_cpu",
               "data_memory", "pvc_name", "pvc_mount_path", "span", "tune", "tune_trials",
               "tune_steps", "tune_minutes",
               # run-time parameters: the extended Trainer passes them to run_fn
               "epochs", "learning_rate", "batch_size"}
TRANSFORM_FIELDS = {"image_key", "label_key", "image_format", "raw_height", "raw_width",
                    "raw_channels", "raw_min_value", "raw_max_value", "label_format",
                    "image_height", "image_width", "image_channels", "num_classes",
                    "resize_mode", "max_pixels"}
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything a runner needs to build and run the pipeline.

    Empty path fields are derived from ``work_dir``; an empty ``data_root`` means the embedded
    default dataset (scikit-learn's handwritten digits as PNG tf.Examples). With ``spans``,
    ``data_root`` holds ``span-<N>/{train,eval}/`` and each run takes the latest span.
    """

    pipeline_name: str = "image-classifier"
    work_dir: str = "outputs"
    data_root: str = ""
    pipeline_root: str = ""
    metadata_path: str = ""
    serving_dir: str = ""
    model_name: str = "image_classifier"
    image_key: str = "image"
    label_key: str = "label"
    image_format: str = "encoded"
    raw_height: int = 0
    raw_width: int = 0
    raw_channels: int = 0
    raw_min_value: float = 0.0
    raw_max_value: float = 255.0
    label_format: str = "int"
    id_key: str = ""
    max_bad_image_fraction: float = 0.0
    schema_path: str = ""
    allowed_anomalies: tuple[str, ...] = ()
    label_drift_threshold: float = 0.0
    size_drift_threshold: float = 0.0
    size_keys: tuple[str, ...] = ("height", "width")
    image_height: int = 8
    image_width: int = 8
    image_channels: int = 1
    num_classes: int = 10
    class_names: tuple[str, ...] = ()
    resize_mode: str = "pad"
    max_pixels: int = 50_000_000
    train_steps: int = 0
    eval_steps: int = 20
    epochs: int = 0
    batch_size: int = 32
    learning_rate: float = 0.003
    lr_schedule: str = "warmup_cosine"
    backbone: str = "cnn"
    width: int = 32
    dropout: float = 0.2
    pretrained_weights: str = ""
    fine_tune_layers: int = 0
    fine_tune_epochs: int = 0
    tflite: str = ""
    strategy: str = "auto"
    mixed_precision: bool = True
    augmentation: tuple[str, ...] = DEFAULT_AUGMENTATION
    early_stopping_patience: int = 4
    tune: bool = False
    tune_trials: int = 8
    tune_steps: int = 0
    tune_minutes: float = 20.0
    cache_input_mb: int = 1024
    seed: int = 42
    min_accuracy: float = 0.9
    max_regression: float = 0.01
    min_class_recall: float = 0.0
    keep_versions: int = 5
    spans: bool = False
    span: int = 0
    warm_start: bool = False
    beam_mode: str = "in_process"
    beam_workers: int = 0
    beam_args: tuple[str, ...] = ()
    enable_cache: bool = True
    # Kubeflow (pipeline.kubeflow_runner)
    kfp_image: str = "tfx-image-pipeline:latest"
    kfp_package: str = ""
    trainer_gpus: int = 1
    gpu_type: str = "nvidia.com/gpu"
    gpu_node_selector: str = ""
    trainer_cpu: float = 8.0
    trainer_memory: str = "32G"
    data_cpu: float = 4.0
    data_memory: str = "16G"
    pvc_name: str = ""
    pvc_mount_path: str = "/mnt/data"

    def __post_init__(self):
        for name, allowed in (("beam_mode", BEAM_MODES), ("resize_mode", RESIZE_MODES),
                              ("strategy", STRATEGIES), ("backbone", BACKBONES),
                              ("tflite", TFLITE_MODES), ("image_format", IMAGE_FORMATS),
                              ("label_format", LABEL_FORMATS), ("lr_schedule", LR_SCHEDULES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if set(self.augmentation) - set(AUGMENTATIONS):
            raise ValueError(f"augmentation must be among {AUGMENTATIONS}, got {self.augmentation}")
        if self.image_format == "raw" and (min(self.raw_height, self.raw_width) < 1
                                           or self.raw_channels not in (1, 3, 4)):
            raise ValueError("image_format=raw needs raw_height, raw_width >= 1 and "
                             "raw_channels in (1, 3, 4)")
        if self.trainer_gpus < 0 or self.trainer_cpu <= 0 or self.data_cpu <= 0:
            raise ValueError("trainer_gpus must be >= 0, trainer_cpu and data_cpu > 0")
        for name in ("max_bad_image_fraction", "max_regression", "min_class_recall",
                     "label_drift_threshold", "size_drift_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.raw_max_value <= self.raw_min_value:
            raise ValueError(f"raw_max_value ({self.raw_max_value}) must be > raw_min_value "
                             f"({self.raw_min_value})")
        if self.label_format == "string" and self.class_names:
            raise ValueError("class_names come from the label vocabulary when label_format=string")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class_names for num_classes="
                             f"{self.num_classes}")
        for name in ("image_height", "image_width", "num_classes", "eval_steps", "batch_size",
                     "max_pixels", "keep_versions", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.width % 8:
            raise ValueError(f"width must be a multiple of 8 (GroupNorm groups), got {self.width}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.image_channels not in (1, 3):
            raise ValueError(f"image_channels must be 1 or 3, got {self.image_channels}")
        if self.tune_trials < 1 or self.tune_steps < 0 or self.tune_minutes <= 0:
            raise ValueError("tune_trials must be >= 1, tune_steps >= 0 and tune_minutes > 0")
        if min(self.train_steps, self.epochs) < 0:
            raise ValueError("train_steps and epochs must be >= 0 (0: derived from the data size)")
        if self.min_accuracy < 0:  # above 1 is allowed: a gate nothing passes
            raise ValueError(f"min_accuracy must be >= 0, got {self.min_accuracy}")
        if self.span < 0 or (self.span and not self.spans):
            raise ValueError(f"span must be >= 0 and needs spans=true, got {self.span}")
        for name in ("serving_dir", "pipeline_root", "data_root"):
            scheme = getattr(self, name).partition("://")[0]
            if "://" in getattr(self, name) and scheme not in OBJECT_STORES:
                raise ValueError(f"{name} {getattr(self, name)}: {scheme}:// is not readable "
                                 f"here (supported: {', '.join(OBJECT_STORES)}:// or a mounted "
                                 "volume path)")
        if "://" in self.serving_dir:
            raise ValueError(
                f"serving_dir {self.serving_dir}: TF Serving must never see a half-written "
                "version, and object stores have no atomic rename; use a mounted volume "
                "(for example a PVC, --pvc-name) that TF Serving mounts too")
        work = Path(self.work_dir).absolute()
        derived = {
            "pipeline_root": work / "pipelines" / self.pipeline_name,
            "metadata_path": work / "metadata" / f"{self.pipeline_name}.sqlite",
            "serving_dir": work / "serving",
        }
        for name, default in derived.items():
            object.__setattr__(self, name, str(getattr(self, name) or default))

    @property
    def uses_default_data(self) -> bool:
        return not self.data_root

    @property
    def default_data_root(self) -> str:
        return str(Path(self.work_dir).absolute() / "data" / "digits")

    @property
    def push_dir(self) -> str:
        """TF Serving model base path: versions appear as ``<push_dir>/<version>/``."""
        return os.path.join(self.serving_dir, self.model_name)

    @property
    def beam_pipeline_args(self) -> list[str]:
        """DirectRunner in-process (small data) or multi-processing, plus any extra args."""
        if self.beam_mode == "in_process":
            args = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
        else:
            args = ["--direct_running_mode=multi_processing",
                    f"--direct_num_workers={self.beam_workers}"]
        return args + list(self.beam_args)

    def trainer_config(self) -> dict[str, Any]:
        """The Trainer's ``custom_config`` (JSON). It is part of the component's cache key,
        so runner-only fields stay out of it."""
        config = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in RUNNER_ONLY}
        config["class_names"] = list(self.class_names or map(str, range(self.num_classes)))
        config["augmentation"] = list(self.augmentation)
        config["code_version"] = code_version()  # lineage; a new release retrains
        return config

    def tuner_config(self) -> dict[str, Any]:
        """The Tuner's ``custom_config``: the Trainer's (with the compiled values of its
        run-time options) and the search budget."""
        return dict(self.trainer_config(), epochs=self.epochs, learning_rate=self.learning_rate,
                    batch_size=self.batch_size, tune_trials=self.tune_trials,
                    tune_steps=self.tune_steps, tune_minutes=self.tune_minutes)

    @property
    def drift_config(self) -> dict[str, Any]:
        """AnomalyGate's drift comparison; empty when both thresholds are off."""
        if not (self.label_drift_threshold or self.size_drift_threshold):
            return {}
        return {"label_key": self.label_key, "label_threshold": self.label_drift_threshold,
                "size_keys": list(self.size_keys), "size_threshold": self.size_drift_threshold}

    def transform_config(self) -> dict[str, Any]:
        """Transform's ``custom_config``: the image spec alone (training options changing
        must not re-run Transform)."""
        return {k: v for k, v in self.trainer_config().items() if k in TRANSFORM_FIELDS}

    @classmethod
    def from_args(cls, argv: list[str] | None = None, environ: dict[str, str] | None = None,
                  prog: str = "python -m pipeline.local_runner",
                  description: str = "Run the TFX image-classification pipeline.",
                  ) -> "PipelineConfig":
        """Defaults, overridden by ``TFX_IMAGE_<FIELD>`` variables, overridden by ``--field``."""
        environ = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        parser = argparse.ArgumentParser(
            prog=prog,
            description=f"{description} Every option can also be set as an environment "
                        f"variable {ENV_PREFIX}<OPTION>.")
        for field in dataclasses.fields(cls):
            env = environ.get(ENV_PREFIX + field.name.upper())
            default = field.default if env is None else _parse(hints[field.name], env)
            parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name,
                                type=lambda v, t=hints[field.name]: _parse(t, v), default=default,
                                help=f"(default: {_show(default)!s})")
        try:
            return cls(**vars(parser.parse_args(argv)))
        except ValueError as err:  # an invalid combination: a usage error (exit code 2)
            parser.exit(2, f"{parser.prog}: error: {err}\n")


def code_version() -> str:
    """The installed project's version (``unknown`` when run from a bare checkout)."""
    from importlib import metadata
    try:
        return metadata.version("tfx-image-pipeline")
    except metadata.PackageNotFoundError:
        return "unknown"


def _parse(kind, text: str):
    if kind is bool:
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
        return text.lower() in ("1", "true", "yes")
    if kind == tuple[str, ...]:
        return tuple(shlex.split(text))
    return kind(text)


def _show(value) -> str:
    return shlex.join(value) if isinstance(value, tuple) else repr(value)
