"""Trainer's ``run_fn``: train under a ``tf.distribute`` strategy, then export (modules.export)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time

import absl.logging
import keras
import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import DataAccessor, FnArgs
from tfx_bsl.tfxio import dataset_options

from modules.export import TFLITE_PATH, ServingModule, class_names, tflite_bytes
from domain.features import (ACCURACY_DELTA, CLASS_WEIGHTS, CODE_FILE, EPOCH_LOG, IMAGE_XF,
                               LABEL_XF, RESULT_FILE, STOP_LOG, TRAINER_SUMMARY, TRAINING_FILE,
                               WARM_START_DIR, ImageSpec)
from modules.model import build_model, learning_rate, unfreeze_top
from modules.preprocessing import model_pixels
from modules.provenance import code_version


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


# The parts of the train split: FIT trains the weights; VALIDATION (a share of the examples,
# chosen by a hash of each image's content) chooses the model: early stopping, the Tuner.
# The eval split is the Evaluator's alone: the data that judges a model never chose it.
FIT, VALIDATION = "fit", "validation"


def is_validation(image: tf.Tensor, percent: int) -> tf.Tensor:
    """Whether one transformed example's ``image_xf`` (encoded bytes or pixels) is in the
    validation part: ``percent`` of 100 hash buckets of its content, so the same image is
    always on the same side, whatever the order, shard or run (as ``ops.ingest`` splits by
    its SHA-256; a different hash, so the carve is independent of that split)."""
    content = image if image.dtype == tf.string else tf.io.serialize_tensor(image)
    return tf.strings.to_hash_bucket_fast(tf.reshape(content, [-1])[0], 100) < percent


def carve(dataset: tf.data.Dataset, part: str, percent: int) -> tf.data.Dataset:
    """The ``part`` (``FIT`` or ``VALIDATION``) of unbatched ``(features, label)`` elements."""
    if part not in (FIT, VALIDATION):
        raise ValueError(f"part must be {FIT} or {VALIDATION}, got {part!r}")
    wanted = part == VALIDATION
    return dataset.filter(lambda features, _: is_validation(features[IMAGE_XF], percent)
                          == wanted)


def input_fn(files: list[str], data_accessor: DataAccessor,
             tf_transform_output: tft.TFTransformOutput, spec: ImageSpec, batch_size: int,
             cache: bool = False, seed: int | None = None, part: str | None = None,
             validation_percent: int = 0, batches: int = 0) -> tf.data.Dataset:
    """Shuffled batches of ``({image_xf: pixels}, label_xf)`` from transformed examples, repeated;
    only the ``part`` of them (``carve``) when given. With ``batches``: instead, the first
    ``batches`` batches in file order, repeated (a validation of ``batches`` steps sees the
    same images every round; a fixed step count keeps the workers of a multi-worker strategy
    in step), decoded once and kept in memory when ``cache``.

    tfxio reads with parallel interleave and parsing (AUTOTUNE); images are decoded in parallel
    (``model_pixels``) and prefetched. With ``cache`` the decoded examples are kept in memory
    after the first epoch and reshuffled every epoch.
    """
    schema = tf_transform_output.transformed_metadata.schema
    read = (dict(batch_size=256 if cache else batch_size, num_epochs=1, shuffle=False)
            if cache or batches else dict(batch_size=batch_size, shuffle_seed=seed))
    dataset = data_accessor.tf_dataset_factory(files, dataset_options.TensorFlowDatasetOptions(
        label_key=LABEL_XF, **read), schema)
    if part:
        dataset = carve(dataset.unbatch(), part, validation_percent).batch(read["batch_size"])

    def pixels(features, label):
        return {IMAGE_XF: model_pixels(features[IMAGE_XF], spec)}, label

    dataset = dataset.map(pixels, num_parallel_calls=tf.data.AUTOTUNE)
    if batches:
        dataset = dataset.unbatch().batch(batch_size).take(batches)
        return (dataset.cache() if cache else dataset).repeat().prefetch(tf.data.AUTOTUNE)
    if not cache:
        return dataset.prefetch(tf.data.AUTOTUNE)
    return (dataset.cache().unbatch().shuffle(10_000, seed=seed).batch(batch_size).repeat()
            .prefetch(tf.data.AUTOTUNE))


def class_counts(files: list[str], data_accessor: DataAccessor,
                 tf_transform_output: tft.TFTransformOutput, num_classes: int,
                 validation_percent: int) -> dict[str, list[int]]:
    """``{FIT: [examples per class id], VALIDATION: [...]}`` of the train split, in one read
    (parsing only, no decoding)."""
    dataset = data_accessor.tf_dataset_factory(files, dataset_options.TensorFlowDatasetOptions(
        batch_size=256, label_key=LABEL_XF, num_epochs=1, shuffle=False),
        tf_transform_output.transformed_metadata.schema).unbatch()

    def add(counts, example):
        features, label = example
        row = tf.cast(is_validation(features[IMAGE_XF], validation_percent), tf.int64)
        index = tf.stack([row, tf.reshape(tf.cast(label, tf.int64), [-1])[0]])
        return tf.tensor_scatter_nd_add(counts, index[tf.newaxis], tf.constant([1], tf.int64))

    counts = dataset.reduce(tf.zeros([2, num_classes], tf.int64), add).numpy().tolist()
    return {FIT: counts[0], VALIDATION: counts[1]}


# ``auto`` weighs the loss when the largest class has over this many times the smallest's
# examples.
IMBALANCE_RATIO = 5.0


def class_weight(counts: list[int], mode: str) -> dict[int, float] | None:
    """Keras ``class_weight``: ``balanced`` gives each class ``total / (classes * count)`` (each
    class then weighs as much in the loss); ``none`` gives None; ``auto`` is balanced when the
    classes are over ``IMBALANCE_RATIO`` apart, else none. Classes without examples get 1."""
    if mode not in CLASS_WEIGHTS:
        raise ValueError(f"class_weights must be one of {CLASS_WEIGHTS}, got {mode!r}")
    present = [c for c in counts if c]
    if mode == "none" or not present or (
            mode == "auto" and max(present) <= IMBALANCE_RATIO * min(present)):
        return None
    total = sum(present)
    return {i: (total / (len(present) * c) if c else 1.0) for i, c in enumerate(counts)}


def fits_in_memory(examples: int, spec: ImageSpec, limit_mb: int) -> bool:
    """Whether ``examples`` decoded float32 images of ``spec`` take under ``limit_mb`` MiB."""
    return examples * spec.height * spec.width * spec.channels * 4 < limit_mb * 2**20


WEIGHTS_FILE, ARCHITECTURE_FILE = "model.weights.h5", "architecture.json"

# The options that shape the weights: equal values, loadable weights.
ARCHITECTURE_KEYS = ("backbone", "width", "image_height", "image_width", "image_channels",
                     "num_classes", "augmentation")


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


# What the Tuner searches; the Trainer takes its best values over the configured ones.
TUNED = ("learning_rate", "width", "dropout")
# The derived step budget (train_steps=0): passes over the data to see about AUTO_EXAMPLES
# images (small datasets need many passes), at least MIN_EPOCHS and at most MAX_EPOCHS of them
# (epochs=0). The budget is a cap: training runs in validation rounds (Keras epochs) of at
# least MIN_ROUND_STEPS steps and ROUND_COST times the batches one validation reads, so a check
# costs a few percent of a round, and stops early (``Convergence``).
AUTO_EXAMPLES, MIN_EPOCHS, MAX_EPOCHS = 48_000, 5, 100
MIN_ROUND_STEPS, ROUND_COST = 25, 8
# Convergence: a round improves when its validation accuracy beats the best by more than
# ACCURACY_DELTA; the plateau is PATIENCE rounds, and at least PLATEAU_SHARE of the steps the
# last improvement took, without one; no plateau counts before MIN_SHARE of the budget (the
# learning rate's warm-up and the first steps at chance).
PATIENCE, PLATEAU_SHARE, MIN_SHARE = 3, 0.5, 0.2


def step_budget(train_steps: int, epochs: int, examples: int, batch_size: int) -> int:
    """``train_steps`` if given, else ``epochs`` passes over ``examples`` (derived from their
    number when 0: see ``AUTO_EXAMPLES``)."""
    if train_steps:
        return train_steps
    derived = math.ceil(AUTO_EXAMPLES / max(examples, 1))
    passes = epochs or min(MAX_EPOCHS, max(MIN_EPOCHS, derived))
    return passes * max(1, math.ceil(examples / batch_size))


def round_steps(steps: int, validation_batches: int) -> int:
    """Steps per validation round within a budget of ``steps``."""
    return max(1, min(steps, max(MIN_ROUND_STEPS, ROUND_COST * validation_batches)))


class Convergence:
    """Decides after each validation round whether training goes on, and keeps the weights
    of the best round. ``stop`` is ``target`` once validation accuracy reaches
    ``target_accuracy`` (0: none); ``plateau`` once it has not improved by more than
    ``ACCURACY_DELTA`` for ``PATIENCE`` rounds and ``PLATEAU_SHARE`` of the steps its last
    improvement took (not before ``MIN_SHARE`` of ``budget``), after an annealing tail of
    that length when ``schedule`` can anneal (``WarmupCosine``: the rate decays to its floor
    by the end of the tail); else ``budget`` at the end. ``per_round`` is the steps of a
    round; ``rounds`` holds ``(steps, seconds since start, validation accuracy)``."""

    def __init__(self, budget: int, per_round: int, target_accuracy: float, started: float,
                 schedule=None):
        self.budget, self.per_round, self.schedule = budget, per_round, schedule
        self.target, self.started = target_accuracy, started
        self.rounds: list[tuple[int, float, float]] = []
        self.stop, self.best_weights, self.annealed_at = "budget", None, 0
        self._best = (-1.0, -math.inf)  # (accuracy, -loss) of the kept weights
        self._level, self._improved = -1.0, 0  # the accuracy to beat, the last improvement
        self._end = budget  # the step training ends at

    def update(self, steps: int, accuracy: float, loss: float, weights) -> bool:
        """Records a round; returns whether to stop."""
        self.rounds.append((steps, round(time.perf_counter() - self.started, 2), accuracy))
        if (accuracy, -loss) > self._best:  # the lower loss breaks a tie
            self._best, self.best_weights = (accuracy, -loss), weights()
        if accuracy > self._level + ACCURACY_DELTA:
            self._improved = steps
        self._level = max(self._level, accuracy)
        tail = max(PATIENCE * self.per_round, PLATEAU_SHARE * self._improved)
        if self.target and accuracy >= self.target:
            self.stop = "target"
        elif steps >= self._end:
            self.stop = "plateau" if self.annealed_at else "budget"
        elif (not self.annealed_at and steps >= MIN_SHARE * self.budget
              and steps - self._improved >= tail):
            self.annealed_at = steps
            if not hasattr(self.schedule, "anneal"):
                self.stop = "plateau"
            else:  # the tail in whole rounds
                self._end = min(self.budget, steps + self.per_round * math.ceil(
                    tail / self.per_round))
                self.schedule.anneal(steps, self._end - steps)
        return self.stop != "budget"

    def time_to_accuracy(self, final: float) -> float | None:
        """Seconds until validation accuracy first came within ``ACCURACY_DELTA`` of ``final``."""
        return next((s for _, s, a in self.rounds if a >= final - ACCURACY_DELTA), None)


def _callbacks(config: dict, log_dir: str, api, convergence: Convergence) -> list:
    """A log line per validation round (``EPOCH_LOG``), TensorBoard, ``convergence``'s stop
    and best-weights restore, and ReduceLROnPlateau when ``lr_schedule=plateau``."""

    class Rounds(api.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            values = [logs.get(k, float("nan")) for k in ("loss", "accuracy", "val_loss",
                                                          "val_accuracy")]
            absl.logging.info(EPOCH_LOG, epoch + 1, self.params["epochs"], *values)
            steps = (epoch + 1) * self.params["steps"]
            if convergence.update(steps, values[3], values[2], self.model.get_weights):
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            if convergence.best_weights is not None:
                self.model.set_weights(convergence.best_weights)
            absl.logging.info(STOP_LOG, convergence.rounds[-1][0] if convergence.rounds else 0,
                              convergence.budget, convergence.stop)

    callbacks = [Rounds(), api.callbacks.TensorBoard(log_dir=log_dir)]
    if config["lr_schedule"] == "plateau":
        callbacks.append(api.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3,
                                                         patience=PATIENCE))
    return callbacks


class _Clock:
    """Seconds per named phase, in order."""

    def __init__(self):
        self.seconds, self.started = {}, time.perf_counter()
        self._last = self.started

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._last, 2)
        self._last = now


def setup_training(config: dict):
    """The strategy kind, Keras API and strategy for this machine, seeds and precision set."""
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


def fit_arguments(inputs: Inputs) -> dict:
    """``model.fit`` arguments for ``inputs.steps`` in validation rounds (Keras epochs,
    ``round_steps``), each ending in a validation on the validation part (never the eval
    split); the loss weighted by ``inputs.class_weight``."""
    return dict(x=inputs.train, validation_data=inputs.validation,
                validation_steps=inputs.validation_batches,
                epochs=inputs.steps // inputs.round_steps, steps_per_epoch=inputs.round_steps,
                verbose=0, class_weight=inputs.class_weight)


def _fit(model, inputs: Inputs, fn_args: FnArgs, config: dict, strategy, api,
         convergence: Convergence):
    """Fits within the step budget in validation rounds until ``convergence`` stops it;
    fine-tunes an application backbone if asked."""
    fit = dict(fit_arguments(inputs),
               callbacks=_callbacks(config, fn_args.model_run_dir, api, convergence))
    history = model.fit(**fit).history
    if config["backbone"] != "cnn" and config["fine_tune_layers"] and config["fine_tune_epochs"]:
        absl.logging.info("Fine-tuning the top %d backbone layers", config["fine_tune_layers"])
        with strategy.scope():
            unfreeze_top(model, config["fine_tune_layers"], config["learning_rate"] / 10, api)
        model.fit(**dict(fit, epochs=config["fine_tune_epochs"], callbacks=fit["callbacks"][1:]))
    return history


def _export(model, out_dir: str, config: dict, tf_transform_output, spec: ImageSpec,
            names: list[str], warm: dict | None) -> None:
    """The serving SavedModel, warm-start weights, effective settings and optional TFLite."""
    ServingModule(model, tf_transform_output, spec, names).save(out_dir)
    export_warm_start(model, out_dir, config, warm)
    _write_json(os.path.join(out_dir, TRAINING_FILE), config)
    _write_json(os.path.join(out_dir, CODE_FILE), code_version())
    if config["tflite"]:
        path = os.path.join(out_dir, TFLITE_PATH)
        tf.io.gfile.makedirs(os.path.dirname(path))
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(tflite_bytes(model, spec, config["tflite"]))


@dataclasses.dataclass
class Inputs:
    """What training reads: the Transform output, the train split's examples per class in
    its fit and validation parts, the step budget, the loss's class weights, the repeated fit
    dataset and the validation's ``validation_batches``, at the global batch size."""
    tf_transform_output: tft.TFTransformOutput
    counts: dict[str, list[int]]
    steps: int
    class_weight: dict[int, float] | None
    train: tf.data.Dataset
    validation: tf.data.Dataset
    validation_batches: int

    @property
    def round_steps(self) -> int:
        """Steps per validation round (``round_steps``)."""
        return round_steps(self.steps, self.validation_batches)

    @property
    def examples(self) -> int:
        return sum(map(sum, self.counts.values()))


def read_inputs(fn_args: FnArgs, config: dict, batch_size: int, train_steps: int,
                share: float = 1.0) -> Inputs:
    """The datasets and ``share`` of a step budget of ``train_steps`` (0: derived from the
    train split's size, see ``step_budget``). Reads the train split only: the eval split is
    the Evaluator's."""
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    percent = config["validation_percent"]
    counts = class_counts(fn_args.train_files, fn_args.data_accessor, tf_transform_output,
                          config["num_classes"], percent)
    if not sum(counts[VALIDATION]) or not sum(counts[FIT]):
        raise ValueError(f"validation_percent={percent} of the {sum(map(sum, counts.values()))} "
                         "training examples leaves a part empty: use more data or another "
                         "percentage")
    examples = sum(map(sum, counts.values()))
    steps = max(1, round(share * step_budget(train_steps, config["epochs"], examples,
                                             batch_size)))
    spec = ImageSpec.from_custom_config(config)
    cache = fits_in_memory(examples, spec, config["cache_input_mb"])
    weights = class_weight(counts[FIT], config["class_weights"])
    absl.logging.info("%d training examples (%d validation), global batch %d: %d steps; "
                      "in-memory cache %s; class weights %s", examples, sum(counts[VALIDATION]),
                      batch_size, steps, cache, weights)
    validation_batches = min(fn_args.eval_steps, math.ceil(sum(counts[VALIDATION]) / batch_size))
    train, validation = (input_fn(fn_args.train_files, fn_args.data_accessor,
                                  tf_transform_output, spec, batch_size, cache, config["seed"],
                                  part, percent, batches)
                         for part, batches in ((FIT, 0), (VALIDATION, validation_batches)))
    return Inputs(tf_transform_output, counts, steps, weights, train, validation,
                  validation_batches)


def model_for(config: dict, rate, api):
    """The configured model, compiled with the learning rate ``rate`` (a number or a
    schedule)."""
    return build_model(ImageSpec.from_custom_config(config), rate,
                       tuple(config["augmentation"]), config["backbone"],
                       config["pretrained_weights"], api, config["width"], config["dropout"])


def run_fn(fn_args: FnArgs) -> None:
    """Set up the strategy, read the transformed examples, build (and warm-start) the model
    with the Tuner's best hyperparameters if any, fit within the step budget, evaluate,
    export; ``TRAINER_SUMMARY`` in the ModelRun records the budget, the class names, the
    examples per class of the fit and validation parts, the class weights, the final
    validation metrics, the seconds of each phase, the rounds run and why training stopped,
    and the time to accuracy (``Convergence``)."""
    clock = _Clock()
    tuned = tuned_values(fn_args.hyperparameters)
    config = dict(fn_args.custom_config, **tuned)
    tf_config, api, strategy = setup_training(config)
    batch_size = config["batch_size"] * strategy.num_replicas_in_sync
    inputs = read_inputs(fn_args, config, batch_size, fn_args.train_steps)
    config["train_steps"] = inputs.steps
    names = config["class_names"] = class_names(config, inputs.tf_transform_output)
    with strategy.scope():
        schedule = learning_rate(config["lr_schedule"], config["learning_rate"], inputs.steps,
                                 api)
        model = model_for(config, schedule, api)
        warm = warm_start(model, fn_args.base_model, config) if config["warm_start"] else None
    clock.lap("input_and_compile")
    convergence = Convergence(inputs.steps, inputs.round_steps, config["target_accuracy"],
                              clock.started, schedule)
    history = _fit(model, inputs, fn_args, config, strategy, api, convergence)
    clock.lap("fit")
    metrics = model.evaluate(inputs.validation, steps=inputs.validation_batches, verbose=0,
                             return_dict=True)
    clock.lap("evaluate")
    # Every worker saves (collective ops need all of them); only the chief's copy is the model.
    out_dir = fn_args.serving_model_dir if is_chief(tf_config) else tempfile.mkdtemp()
    _export(model, out_dir, config, inputs.tf_transform_output,
            ImageSpec.from_custom_config(config), names, warm)
    clock.lap("export")
    _write_json(os.path.join(fn_args.model_run_dir, TRAINER_SUMMARY), {
        "train_examples": inputs.examples, "batch_size": batch_size, "train_steps": inputs.steps,
        "class_names": names, "class_counts": inputs.counts,
        "validation_percent": config["validation_percent"],
        "class_weight": inputs.class_weight and list(inputs.class_weight.values()),
        "rounds_run": len(history.get("loss", [])), "validation_metrics": metrics,
        "last_round_train_accuracy": history.get("accuracy", [None])[-1],
        "steps_run": convergence.rounds[-1][0] if convergence.rounds else 0,
        "stopped": convergence.stop, "rounds": convergence.rounds,
        "time_to_accuracy": convergence.time_to_accuracy(metrics["accuracy"]),
        "tuned": tuned, "seconds": clock.seconds})


def tuned_values(hyperparameters: dict | None) -> dict:
    """The Tuner's best values (``TUNED``) from its KerasTuner config; empty without one."""
    if not hyperparameters:
        return {}
    import keras_tuner
    values = keras_tuner.HyperParameters.from_config(hyperparameters).values
    return {name: values[name] for name in TUNED if name in values}
