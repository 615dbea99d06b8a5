"""What the Trainer and the Tuner read: the train split's fit and validation parts (carved by
image content), their input pipelines, examples per class and the loss's class weights."""
from __future__ import annotations

import dataclasses
import math

import absl.logging
import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import DataAccessor, FnArgs
from tfx_bsl.tfxio import dataset_options

from domain.features import CLASS_WEIGHTS, IMAGE_XF, LABEL_XF, ImageSpec
from modules.budget import round_steps, step_budget
from modules.preprocessing import model_pixels

# The parts of the train split: FIT trains the weights; VALIDATION (a share of the examples,
# chosen by a hash of each image's content) chooses the model: early stopping, the Tuner.
# The eval split is the Evaluator's alone: the data that judges a model never chose it.
FIT, VALIDATION = "fit", "validation"


def hash_bucket(image: tf.Tensor) -> tf.Tensor:
    """One transformed example's bucket of 100 by a hash of its ``image_xf`` (encoded bytes or
    pixels): the same image is always in the same bucket, whatever the order, shard or run (as
    ``ops.ingest`` splits by its SHA-256; a different hash, so the carve is independent of that
    split)."""
    content = image if image.dtype == tf.string else tf.io.serialize_tensor(image)
    return tf.strings.to_hash_bucket_fast(tf.reshape(content, [-1])[0], 100)


def is_validation(image: tf.Tensor, percent: int) -> tf.Tensor:
    """Whether one transformed example is in the validation part: the first ``percent``
    buckets (``hash_bucket``)."""
    return hash_bucket(image) < percent


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


def bucket_counts(files: list[str], data_accessor: DataAccessor,
                  tf_transform_output: tft.TFTransformOutput,
                  num_classes: int) -> list[list[int]]:
    """Examples per hash bucket (``hash_bucket``) and class id of the train split, in one read
    (parsing only, no decoding)."""
    dataset = data_accessor.tf_dataset_factory(files, dataset_options.TensorFlowDatasetOptions(
        batch_size=256, label_key=LABEL_XF, num_epochs=1, shuffle=False),
        tf_transform_output.transformed_metadata.schema).unbatch()

    def add(counts, example):
        features, label = example
        index = tf.stack([hash_bucket(features[IMAGE_XF]),
                          tf.reshape(tf.cast(label, tf.int64), [-1])[0]])
        return tf.tensor_scatter_nd_add(counts, index[tf.newaxis], tf.constant([1], tf.int64))

    return dataset.reduce(tf.zeros([100, num_classes], tf.int64), add).numpy().tolist()


def class_counts(buckets: list[list[int]], percent: int) -> dict[str, list[int]]:
    """``{FIT: [examples per class id], VALIDATION: [...]}`` from ``bucket_counts`` with the
    first ``percent`` buckets validating."""
    return {part: [sum(column) for column in zip(*rows)]
            for part, rows in ((FIT, buckets[percent:]), (VALIDATION, buckets[:percent]))}


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
        """Steps per validation round (``budget.round_steps``)."""
        return round_steps(self.steps, self.validation_batches)

    @property
    def examples(self) -> int:
        return sum(map(sum, self.counts.values()))


def read_inputs(fn_args: FnArgs, config: dict, batch_size: int, train_steps: int,
                share: float = 1.0) -> Inputs:
    """The datasets and ``share`` of a step budget of ``train_steps`` (0: derived from the
    train split's size, see ``budget.step_budget``), with the validation part sized by
    ``validation_percent``. Reads the train split only: the eval split is the Evaluator's."""
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    buckets = bucket_counts(fn_args.train_files, fn_args.data_accessor, tf_transform_output,
                            config["num_classes"])
    percent = config["validation_percent"]
    counts = class_counts(buckets, percent)
    examples = sum(map(sum, counts.values()))
    if not sum(counts[VALIDATION]) or not sum(counts[FIT]):
        raise ValueError(f"validation_percent={percent} of the {examples} training examples "
                         "leaves a part empty: use more data or another percentage")
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
