"""The pipeline's one typed configuration: defaults, environment, then command line.

Every field declares its help text, option group and scope next to it (``_option``); the CLI
(grouped ``--help``) and the components' custom configs (their cache keys) are derived from
that. The CLI is plain argparse: jsonargparse or tyro would add a dependency for what about 20
lines do here (``TFX_IMAGE_*`` environment overrides, space-separated lists, exit code 2 on an
invalid combination).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
from pathlib import Path
from typing import Any, get_type_hints

from domain.data_shape import RULE
from domain.features import (AUGMENTATIONS, BACKBONES, CLASS_WEIGHTS, DEFAULT_AUGMENTATION,
                              IMAGE_FORMATS, LABEL_FORMATS, LR_SCHEDULES, MAX_PIXELS, RESIZE_MODES,
                              TFLITE_MODES)
from modules.provenance import package_version, source_sha256

ENV_PREFIX = "TFX_IMAGE_"
# The module functions the components run (by module path).
PREPROCESSING_FN = "modules.preprocessing.preprocessing_fn"
RUN_FN = "modules.trainer.run_fn"
TUNER_FN = "modules.tuner.tuner_fn"
# The custom components' code (``components/``), whose hashes key their executions.
COMPONENT_MODULES = tuple(
    f"components.{name[:-3]}" for name in sorted(os.listdir(os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "components")))
    if name.endswith(".py") and name != "__init__.py")
BEAM_MODES = ("in_process", "multi_processing", "dask")
# --beam-mode dask: Beam's DaskRunner with the project's fixes (pipeline/dask_runner.py)
DASK_RUNNER = "pipeline.dask_runner.DaskRunner"
DASK_SCHEMES = ("tcp", "tls")
DASK_CONNECT_SECONDS = 10  # a scheduler that has not answered by then is unreachable
# Beam options that tell where the pipeline's code is (TFX's dependency_utils reads them).
BEAM_DEPENDENCY_FLAGS = ("--extra_package", "--extra_packages", "--setup_file",
                         "--requirements_file", "--sdk_container_image",
                         "--worker_harness_container_image")
SETUP_FILE = str(Path(__file__).resolve().parent.parent / "setup.py")
# URI schemes TensorFlow's file system reads and writes in this image (s3:// would need
# tensorflow-io's plugins, which TensorFlow 2.21 has no release of: use a mounted volume).
OBJECT_STORES = ("gs",)
# Pipeline roots of Kubeflow runs only: KFP's launcher stages their artifacts for each task
# (pipeline.kfp_entrypoint).
STAGED_STORES = ("minio", "s3")
# Option groups (in --help) and scopes: where a field applies. TRANSFORM fields are the image
# spec (Transform's and the Trainer's custom_config), TRAINER fields only the Trainer's;
# RUNNER fields reach no custom_config, so they never enter a component's cache key.
DATA, MODEL, TRAINING, GATE, SERVING, RUNTIME, KUBEFLOW = (
    "data", "model", "training", "gate", "serving", "runtime", "kubeflow")
GROUPS = (DATA, MODEL, TRAINING, GATE, SERVING, RUNTIME, KUBEFLOW)
RUNNER, TRANSFORM, TRAINER = "runner", "transform", "trainer"
SCOPES = (RUNNER, TRANSFORM, TRAINER)


def _option(default, group: str, scope: str, help: str):
    """A config field with its ``--help`` text, option group and scope."""
    return dataclasses.field(default=default,
                             metadata={"help": help, "group": group, "scope": scope})


def fields_in(*scopes: str) -> list[str]:
    """The config fields of ``scopes``, in declaration order."""
    return [f.name for f in dataclasses.fields(PipelineConfig) if f.metadata["scope"] in scopes]


STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
PROFILES = ("cpu", "gpu")  # Kubeflow compile profiles (pipeline.kubeflow_runner)
GPU_TYPE = "nvidia.com/gpu"
# The model's input and classes: 0 means "from the data" (pipeline.data_shape resolves them
# before a run or a compile); with no data root (or the embedded digits' own), the digits'.
FROM_DATA = {"image_height": 8, "image_width": 8, "image_channels": 1, "num_classes": 10}
# Fields that change how a run goes, not what it computes (outside ``definition_sha256``).
HOW_IT_RUNS = ("verbose", "beam_mode", "beam_workers", "dask_address", "dask_timeout")
# Run-time parameters of the compiled Kubeflow pipeline (per run and per recurring run).
RUN_TIME_PARAMETERS = {"span": int, "train_steps": int, "epochs": int, "learning_rate": float,
                       "batch_size": int, "min_accuracy": float}


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything a runner needs to build and run the pipeline.

    Empty path fields are derived from ``work_dir``; an empty ``data_root`` means the embedded
    default dataset (scikit-learn's handwritten digits as PNG tf.Examples). With ``spans``,
    ``data_root`` holds ``span-<N>/{train,eval}/`` and each run takes the latest span.
    """

    # Paths and names
    pipeline_name: str = _option("image-classifier", RUNTIME, RUNNER,
                                 "the pipeline's name in MLMD and under the pipeline root")
    work_dir: str = _option("outputs", RUNTIME, RUNNER,
                            "where the derived paths (pipeline root, metadata, serving dir, "
                            "embedded data) live")
    data_root: str = _option("", DATA, RUNNER,
                             "TFRecords of tf.Examples under [span-N/]{train,eval}/ (a local path "
                             "or gs://); empty: the embedded digits")
    pipeline_root: str = _option("", RUNTIME, RUNNER,
                                 "where the artifacts go (empty: <work-dir>/pipelines/<name>)")
    metadata_path: str = _option("", RUNTIME, RUNNER,
                                 "the local MLMD SQLite file "
                                 "(empty: <work-dir>/metadata/<name>.sqlite)")
    serving_dir: str = _option("", SERVING, RUNNER,
                               "TF Serving's model root, a mounted path "
                               "(empty: <work-dir>/serving)")
    model_name: str = _option("image_classifier", SERVING, RUNNER,
                              "versions are pushed to <serving-dir>/<model-name>/<version>/")
    # The data
    image_key: str = _option("image", DATA, TRANSFORM, "the feature holding the image")
    label_key: str = _option("label", DATA, TRANSFORM, "the feature holding the label")
    image_format: str = _option("encoded", DATA, TRANSFORM,
                                "encoded (JPEG/PNG/GIF/BMP bytes) or raw (a list of pixel values)")
    raw_height: int = _option(0, DATA, TRANSFORM, "image_format=raw: rows of the stored pixels")
    raw_width: int = _option(0, DATA, TRANSFORM, "image_format=raw: columns of the stored pixels")
    raw_channels: int = _option(0, DATA, TRANSFORM,
                                "image_format=raw: channels of the stored pixels (1, 3 or 4)")
    raw_min_value: float = _option(0.0, DATA, TRANSFORM,
                                   "image_format=raw: the value that means black (for example "
                                   "-0.5)")
    raw_max_value: float = _option(255.0, DATA, TRANSFORM,
                                   "image_format=raw: the value that means white (for example 0.5)")
    label_format: str = _option("int", DATA, TRANSFORM,
                                "int (class ids) or string (Transform computes the vocabulary)")
    id_key: str = _option("", DATA, RUNNER,
                          "a feature naming each record in bad-image reports (for example "
                          "source_path)")
    max_bad_image_fraction: float = _option(0.0, DATA, RUNNER,
                                            "the share of undecodable images a run drops before it"
                                            " stops")
    schema_path: str = _option("", DATA, RUNNER,
                               "a curated schema.pbtxt, the data contract (empty: inferred per "
                               "run)")
    allowed_anomalies: tuple[str, ...] = _option((), DATA, RUNNER,
                                                 "anomaly types that do not stop a run")
    label_drift_threshold: float = _option(0.0, DATA, RUNNER,
                                           "max drift of the label distribution from the served "
                                           "model's training data (Jensen-Shannon divergence "
                                           "for int labels, L-infinity distance for string "
                                           "labels); 0: off")
    size_drift_threshold: float = _option(0.0, DATA, RUNNER,
                                          "max Jensen-Shannon divergence of --size-keys from the "
                                          "served model's training data; 0: off")
    size_keys: tuple[str, ...] = _option(("height", "width"), DATA, RUNNER,
                                         "numeric features the size drift check compares")
    # The model
    image_height: int = _option(0, MODEL, TRANSFORM,
                                "the model's input height in pixels; 0: from the data (" + RULE
                                + "; square: a height alone sets the width too; the embedded "
                                "digits: 8)")
    image_width: int = _option(0, MODEL, TRANSFORM,
                               "the model's input width in pixels; 0: from the data, as "
                               "--image-height (the embedded digits: 8)")
    image_channels: int = _option(0, MODEL, TRANSFORM,
                                  "the model's input channels: 1 (grey) or 3 (RGB); 0: from the "
                                  "data (3 when at least a tenth of the images are in colour; "
                                  "the embedded digits: 1)")
    num_classes: int = _option(0, MODEL, TRANSFORM,
                               "the number of classes; 0: from the data (its class map "
                               "classes.json, else the labels; the embedded digits: 10)")
    class_names: tuple[str, ...] = _option((), MODEL, TRAINER,
                                           "names of the class ids, in order (empty: the data's "
                                           "class map, else the ids)")
    resize_mode: str = _option("pad", MODEL, TRANSFORM,
                               "pad (keep the aspect ratio), crop (fill, centre-crop) or stretch")
    max_pixels: int = _option(MAX_PIXELS, MODEL, TRANSFORM,
                              "images with more pixels are refused before decoding (decompression "
                              "bombs)")
    # Training
    train_steps: int = _option(0, TRAINING, RUNNER,
                               "the most training steps (training stops earlier at the "
                               "validation plateau); 0: --epochs passes (run-time parameter)")
    eval_steps: int = _option(20, TRAINING, RUNNER,
                              "the most validation batches of a training round (fewer when the "
                              "validation part is smaller)")
    epochs: int = _option(0, TRAINING, RUNNER,
                          "passes over the training data; 0: derived from its size (run-time "
                          "parameter)")
    batch_size: int = _option(32, TRAINING, RUNNER,
                              "examples per step and replica (run-time parameter)")
    learning_rate: float = _option(0.003, TRAINING, RUNNER,
                                   "the peak learning rate (run-time parameter)")
    lr_schedule: str = _option("warmup_cosine", TRAINING, TRAINER,
                               "warmup_cosine, plateau (ReduceLROnPlateau) or constant")
    backbone: str = _option("cnn", MODEL, TRAINER,
                            "cnn (small, CPU-friendly), mobilenet_v2 or efficientnet_b0")
    width: int = _option(32, MODEL, TRAINER, "the cnn's first filter count (a multiple of 8)")
    dropout: float = _option(0.2, MODEL, TRAINER, "dropout before the classifier")
    pretrained_weights: str = _option("", MODEL, TRAINER,
                                      "a local .weights.h5 file (or imagenet) for an application "
                                      "backbone")
    fine_tune_layers: int = _option(0, TRAINING, TRAINER,
                                    "application backbones: top layers trained after the frozen "
                                    "phase")
    fine_tune_epochs: int = _option(0, TRAINING, TRAINER,
                                    "application backbones: rounds of fine-tuning at a tenth of "
                                    "the rate")
    tflite: str = _option("", MODEL, TRAINER,
                          "also export a TFLite model: float16, dynamic_int8 or int8 (full "
                          "integer, uint8 in and out, calibrated on the train split)")
    distill_teacher: str = _option("", TRAINING, TRAINER,
                                   "knowledge distillation: the model learns from this teacher's "
                                   "softened probabilities too: a pushed version's directory "
                                   "(e.g. outputs/serving/3), or backbone[:width] trained first "
                                   "in the run (e.g. cnn:96, efficientnet_b0); empty: off")
    distill_temperature: float = _option(4.0, TRAINING, TRAINER,
                                         "distillation: the temperature softening both models' "
                                         "probabilities")
    distill_alpha: float = _option(0.5, TRAINING, TRAINER,
                                   "distillation: the labels' weight in the loss (the teacher's "
                                   "is 1 - alpha)")
    strategy: str = _option("auto", TRAINING, TRAINER, "auto, one_device, mirrored or multi_worker")
    mixed_precision: bool = _option(True, TRAINING, TRAINER, "mixed_float16 on GPUs")
    augmentation: tuple[str, ...] = _option(DEFAULT_AUGMENTATION, TRAINING, TRAINER,
                                            "training-only layers: colour, flip, rotate, zoom, "
                                            "invert")
    validation_percent: int = _option(10, TRAINING, TRAINER,
                                      "share of the train split (by image content hash) that "
                                      "chooses the model: early stopping, the Tuner; the eval "
                                      "split only judges it")
    class_weights: str = _option("auto", TRAINING, TRAINER,
                                 "balanced (each class weighs the same in the loss), none, or "
                                 "auto: balanced when the largest class is over 5x the smallest")
    target_accuracy: float = _option(0.0, TRAINING, TRAINER,
                                     "stop training once validation accuracy reaches this; 0: "
                                     "at its plateau or the step budget")
    early_stop: bool = _option(True, TRAINING, TRAINER,
                               "stop at the validation plateau after a short anneal; false: "
                               "train the whole step budget")
    tune: bool = _option(False, TRAINING, RUNNER, "run the KerasTuner Tuner before the Trainer")
    tune_trials: int = _option(8, TRAINING, RUNNER, "the Tuner's most trials")
    tune_steps: int = _option(0, TRAINING, RUNNER,
                              "steps per trial; 0: a quarter of the Trainer's budget")
    tune_minutes: float = _option(20.0, TRAINING, RUNNER, "no trial starts after this many minutes")
    cache_input_mb: int = _option(1024, TRAINING, TRAINER,
                                  "keep decoded training images in memory when under this size")
    seed: int = _option(42, TRAINING, TRAINER, "initialisation and shuffling seed")
    warm_start: bool = _option(False, TRAINING, TRAINER,
                               "start from the served model's weights when the architecture "
                               "matches")
    # The gate and serving
    min_accuracy: float = _option(0.9, GATE, RUNNER,
                                  "the least eval accuracy a model needs to be blessed (run-time "
                                  "parameter)")
    max_regression: float = _option(0.0, GATE, RUNNER,
                                    "the most accuracy a model may lose against the served one "
                                    "(0: no regression); a tolerance is also measured against "
                                    "the best version pushed on the same data, so it cannot "
                                    "compound")
    min_class_recall: float = _option(0.0, GATE, RUNNER, "the least recall of every class; 0: off")
    allow_new_classes: bool = _option(False, GATE, RUNNER,
                                      "allow a model with classes the served one lacks (a new "
                                      "head; the data's class map extends the served one's)")
    max_tflite_drop: float = _option(0.01, GATE, TRAINER,
                                     "the most eval accuracy the TFLite model may lose against "
                                     "the SavedModel; further behind, it is not pushed")
    keep_versions: int = _option(5, SERVING, RUNNER, "pushed versions kept in the serving dir")
    # Running
    spans: bool = _option(False, DATA, RUNNER,
                          "data_root holds span-N/ folders; a run takes the latest span")
    span: int = _option(0, DATA, RUNNER,
                        "this span instead of the latest; 0: the latest (run-time parameter)")
    beam_mode: str = _option("in_process", RUNTIME, RUNNER,
                             "Beam runner: the DirectRunner in_process (small data) or "
                             "multi_processing, or dask (a Dask cluster: --dask-address)")
    beam_workers: int = _option(0, RUNTIME, RUNNER, "multi_processing workers; 0: one per core")
    dask_address: str = _option("", RUNTIME, RUNNER,
                                "the Dask scheduler of --beam-mode dask (tcp://HOST:PORT)")
    dask_timeout: float = _option(3600.0, RUNTIME, RUNNER,
                                  "seconds one Beam component may run on the Dask cluster; "
                                  "past that it fails (a hung or lost worker)")
    beam_args: tuple[str, ...] = _option((), RUNTIME, RUNNER,
                                         "extra Beam pipeline arguments (for example "
                                         "--runner=DataflowRunner ...)")
    enable_cache: bool = _option(True, RUNTIME, RUNNER,
                                 "reuse the results of components whose inputs did not change")
    verbose: bool = _option(False, RUNTIME, RUNNER,
                            "show the libraries' logs and the tracebacks of user errors")
    # Kubeflow (pipeline.kubeflow_runner)
    kfp_image: str = _option("tfx-image-pipeline:latest", KUBEFLOW, RUNNER,
                             "the container image every task runs")
    kfp_package: str = _option("", KUBEFLOW, RUNNER,
                               "the compiled package's path (empty: <work-dir>/kfp/<name>.yaml)")
    profile: str = _option("cpu", KUBEFLOW, RUNNER,
                           "cpu (no GPU: the tasks schedule on any node) or gpu (the Trainer "
                           "and Tuner get GPUs, the GPU toleration and node selector)")
    trainer_gpus: int = _option(0, KUBEFLOW, RUNNER,
                                "GPUs of the Trainer and Tuner pods under --profile gpu (0: 1)")
    gpu_type: str = _option(GPU_TYPE, KUBEFLOW, RUNNER,
                            "the GPU resource name (--profile gpu)")
    gpu_node_selector: str = _option("", KUBEFLOW, RUNNER,
                                     "label=value of the GPU nodes (--profile gpu)")
    task_retries: int = _option(2, KUBEFLOW, RUNNER,
                                "times a failed task's pod is run again (KFP >= 2.5)")
    trainer_cpu: float = _option(8.0, KUBEFLOW, RUNNER, "CPU limit of the Trainer and Tuner pods")
    trainer_memory: str = _option("32G", KUBEFLOW, RUNNER,
                                  "memory limit of the Trainer and Tuner pods")
    data_cpu: float = _option(4.0, KUBEFLOW, RUNNER, "CPU limit of the Beam components' pods")
    data_memory: str = _option("16G", KUBEFLOW, RUNNER, "memory limit of the Beam components' pods")
    pvc_name: str = _option("", KUBEFLOW, RUNNER, "a PersistentVolumeClaim mounted into every task")
    pvc_mount_path: str = _option("/mnt/data", KUBEFLOW, RUNNER, "where the PVC is mounted")

    def __post_init__(self):
        if not self.data_root or os.path.abspath(self.data_root) == self.default_data_root:
            # the embedded digits (also by their path)
            for name, digits in FROM_DATA.items():
                object.__setattr__(self, name, getattr(self, name) or digits)
        for name, allowed in (("beam_mode", BEAM_MODES), ("resize_mode", RESIZE_MODES),
                              ("strategy", STRATEGIES), ("backbone", BACKBONES),
                              ("tflite", TFLITE_MODES), ("image_format", IMAGE_FORMATS),
                              ("label_format", LABEL_FORMATS), ("lr_schedule", LR_SCHEDULES),
                              ("class_weights", CLASS_WEIGHTS), ("profile", PROFILES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if set(self.augmentation) - set(AUGMENTATIONS):
            raise ValueError(f"augmentation must be among {AUGMENTATIONS}, got {self.augmentation}")
        if self.image_format == "raw" and (min(self.raw_height, self.raw_width) < 1
                                           or self.raw_channels not in (1, 3, 4)):
            raise ValueError("image_format=raw needs raw_height, raw_width >= 1 and "
                             "raw_channels in (1, 3, 4)")
        self._check_dask()
        if min(self.trainer_gpus, self.task_retries) < 0 or min(self.trainer_cpu,
                                                                 self.data_cpu) <= 0:
            raise ValueError("trainer_gpus and task_retries must be >= 0, trainer_cpu and "
                             "data_cpu > 0")
        for name in ("max_bad_image_fraction", "max_regression", "min_class_recall",
                     "label_drift_threshold", "size_drift_threshold", "target_accuracy",
                     "max_tflite_drop", "distill_alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.raw_max_value <= self.raw_min_value:
            raise ValueError(f"raw_max_value ({self.raw_max_value}) must be > raw_min_value "
                             f"({self.raw_min_value})")
        if self.label_format == "string" and self.class_names:
            raise ValueError("class_names come from the label vocabulary when label_format=string")
        if self.class_names and self.num_classes and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class_names for num_classes="
                             f"{self.num_classes}")
        for name in ("eval_steps", "batch_size", "max_pixels", "keep_versions", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in FROM_DATA:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 1 (0: from the data), got "
                                 f"{getattr(self, name)}")
        if self.width % 8:
            raise ValueError(f"width must be a multiple of 8 (GroupNorm groups), got {self.width}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.image_channels not in (0, 1, 3):
            raise ValueError(f"image_channels must be 1 or 3 (0: from the data), got "
                             f"{self.image_channels}")
        if not 1 <= self.validation_percent <= 50:
            raise ValueError(f"validation_percent must be in [1, 50], got "
                             f"{self.validation_percent}")
        if self.tune_trials < 1 or self.tune_steps < 0 or self.tune_minutes <= 0:
            raise ValueError("tune_trials must be >= 1, tune_steps >= 0 and tune_minutes > 0")
        self._check_distillation()
        if min(self.train_steps, self.epochs) < 0:
            raise ValueError("train_steps and epochs must be >= 0 (0: derived from the data size)")
        if self.min_accuracy < 0:  # above 1 is allowed: a gate nothing passes
            raise ValueError(f"min_accuracy must be >= 0, got {self.min_accuracy}")
        if self.span < 0 or (self.span and not self.spans):
            raise ValueError(f"span must be >= 0 and needs spans=true, got {self.span}")
        for name in ("serving_dir", "pipeline_root", "data_root"):
            scheme = getattr(self, name).partition("://")[0]
            stores = OBJECT_STORES + (STAGED_STORES if name == "pipeline_root" else ())
            if "://" in getattr(self, name) and scheme not in stores:
                raise ValueError(f"{name} {getattr(self, name)}: {scheme}:// is not readable "
                                 f"here (supported: {', '.join(stores)}:// or a mounted "
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

    def _check_distillation(self) -> None:
        teacher = self.distill_teacher
        if not teacher:
            return
        if self.distill_temperature <= 0:
            raise ValueError(f"distill_temperature must be > 0, got {self.distill_temperature}")
        if self.strategy == "multi_worker":
            raise ValueError("distill_teacher needs Keras 3: not with strategy=multi_worker")
        if self.backbone != "cnn" and self.fine_tune_layers and self.fine_tune_epochs:
            raise ValueError("distill_teacher: the student's backbone is not fine-tuned (set "
                             "fine_tune_layers or fine_tune_epochs to 0)")
        name, _, width = teacher.partition(":")
        if name in BACKBONES and width and not (width.isdigit() and int(width) % 8 == 0):
            raise ValueError(f"distill_teacher {teacher}: the width must be a multiple of 8")

    @property
    def from_data(self) -> list[str]:
        """The options still to be resolved from the data (``pipeline.data_shape``)."""
        return [name for name in FROM_DATA if not getattr(self, name)]

    @property
    def uses_default_data(self) -> bool:
        return not self.data_root

    @property
    def default_data_root(self) -> str:
        return str(Path(self.work_dir).absolute() / "data" / "digits")

    @property
    def local_root(self) -> str:
        """Where this machine keeps a run's log and report: the pipeline root, or the work dir
        when the root is an object store (they are opened here)."""
        return self.work_dir if "://" in self.pipeline_root else self.pipeline_root

    @property
    def package_path(self) -> str:
        """The compiled Kubeflow package: ``kfp_package``, else ``<work_dir>/kfp/<name>.yaml``."""
        return self.kfp_package or os.path.join(self.work_dir, "kfp", f"{self.pipeline_name}.yaml")

    @property
    def push_dir(self) -> str:
        """TF Serving model base path: versions appear as ``<push_dir>/<version>/``."""
        return os.path.join(self.serving_dir, self.model_name)

    def _check_dask(self) -> None:
        """--dask-address is a ``tcp://HOST:PORT`` (or ``tls://``) and is given with, and
        only with, --beam-mode dask."""
        if (self.beam_mode == "dask") != bool(self.dask_address):
            raise ValueError("--beam-mode dask and --dask-address tcp://HOST:PORT go together")
        scheme, _, where = self.dask_address.partition("://")
        host, _, port = where.rpartition(":")
        if self.dask_address and (scheme not in DASK_SCHEMES or not host or not port.isdigit()):
            raise ValueError(f"--dask-address must be tcp://HOST:PORT, got {self.dask_address!r}")
        if self.dask_timeout <= 0:
            raise ValueError(f"dask_timeout must be > 0, got {self.dask_timeout}")

    @property
    def beam_pipeline_args(self) -> list[str]:
        """DirectRunner in-process (small data) or multi-processing, or the Dask cluster, plus
        any extra args, and where the code is (``--setup_file``, unless the extra args say):
        without it TFX builds a source package of itself before every Beam component, which
        the DirectRunner never uses and which a remote runner could not run our components
        from."""
        if self.beam_mode == "in_process":  # FnApiRunner: the DirectRunner first tries
            # Prism, which fails here after building a source package twice (~2.5 s a component)
            args = ["--direct_running_mode=in_memory", "--direct_num_workers=1",
                    "--runner=FnApiRunner"]
        elif self.beam_mode == "dask":
            args = [f"--runner={DASK_RUNNER}", f"--dask_client_address={self.dask_address}",
                    f"--dask_connection_timeout={DASK_CONNECT_SECONDS}",
                    f"--dask_run_timeout={self.dask_timeout:g}"]
        else:
            args = ["--direct_running_mode=multi_processing",
                    f"--direct_num_workers={self.beam_workers}"]
        if not any(arg.partition("=")[0] in BEAM_DEPENDENCY_FLAGS for arg in self.beam_args):
            args.append(f"--setup_file={SETUP_FILE}")
        return args + list(self.beam_args)

    def trainer_config(self) -> dict[str, Any]:
        """The Trainer's ``custom_config`` (JSON). It is part of the component's cache key,
        so runner-only fields stay out of it."""
        config = {name: getattr(self, name) for name in fields_in(TRANSFORM, TRAINER)}
        config["class_names"] = list(self.class_names or self._data_classes()
                                     or map(str, range(self.num_classes)))
        config["augmentation"] = list(self.augmentation)
        config["code_version"] = package_version()  # a new release retrains
        config["source_sha256"] = source_sha256(RUN_FN)  # and so does an edited module
        return config

    def _data_classes(self) -> list[str] | None:
        """The class names of the data root's class map (``ops.ingest``), if it has one."""
        from domain import class_map
        return class_map.read(self.data_root) if self.data_root else None

    def definition_sha256(self) -> str:
        """A hash of everything that decides what a run computes: every field but those that
        only change how it runs, the package version and the components' code hashes."""
        import hashlib
        import json
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in HOW_IT_RUNS}
        code = [package_version()] + [source_sha256(f) for f in (
            PREPROCESSING_FN, RUN_FN, TUNER_FN, *COMPONENT_MODULES)]
        return hashlib.sha256(json.dumps([fields, code], sort_keys=True).encode()).hexdigest()

    def tuner_config(self) -> dict[str, Any]:
        """The Tuner's ``custom_config``: the Trainer's (with the compiled values of its
        run-time options) and the search budget."""
        return dict(self.trainer_config(), epochs=self.epochs, learning_rate=self.learning_rate,
                    batch_size=self.batch_size, tune_trials=self.tune_trials,
                    tune_steps=self.tune_steps, tune_minutes=self.tune_minutes,
                    source_sha256=source_sha256(TUNER_FN))

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
        config = {k: v for k, v in self.trainer_config().items() if k in fields_in(TRANSFORM)}
        return dict(config, source_sha256=source_sha256(PREPROCESSING_FN))

    @classmethod
    def from_args(cls, argv: list[str] | None = None, environ: dict[str, str] | None = None,
                  prog: str = "python -m pipeline.local_runner",
                  description: str = "Run the TFX image-classification pipeline.",
                  ) -> "PipelineConfig":
        """Defaults, overridden by ``TFX_IMAGE_<FIELD>`` variables, overridden by ``--field``;
        ``--help`` lists the options by group with their help texts (the fields' metadata)."""
        environ = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        parser = argparse.ArgumentParser(
            prog=prog, usage="%(prog)s [--OPTION VALUE ...]",
            description=f"{description} Every option can also be set as an environment "
                        f"variable {ENV_PREFIX}<OPTION>.")
        groups = {name: parser.add_argument_group(f"{name} options") for name in GROUPS}
        for field in dataclasses.fields(cls):
            env = environ.get(ENV_PREFIX + field.name.upper())
            default = field.default if env is None else _parse(hints[field.name], env)
            groups[field.metadata["group"]].add_argument(
                f"--{field.name.replace('_', '-')}", dest=field.name,
                type=lambda v, t=hints[field.name]: _parse(t, v), default=default,
                metavar=hints[field.name].__name__.upper() if isinstance(
                    hints[field.name], type) else "WORDS",
                help=f"{field.metadata['help']} (default: {_show(default)!s})")
        try:
            return cls(**vars(parser.parse_args(argv)))
        except ValueError as err:  # an invalid combination: a usage error (exit code 2)
            parser.exit(2, f"{parser.prog}: error: {err}\n")


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
