"""The model's input size, channels and classes from the data, when no option sets them.

``resolve(config)`` is the one resolution: the local runner calls it before a run and the
Kubeflow compiler before compiling, so the components' custom configs (their cache keys) hold
the resolved values and a rerun on the same data is a cache hit; on Kubeflow it happens once,
at compile time, and the compiled spec records it. Explicit options win; what is left at 0
(``PipelineConfig.from_data``) comes from, in order:

- the class map ``classes.json`` (``domain.class_map``): the number of classes and their names;
- the ingest manifest of the span the run reads (``ops.ingest``: image sizes and colour);
- else a sample of the records, decoded here (TFRecords from elsewhere): the first
  ``SAMPLED_IMAGES`` images and the labels of up to ``LABELS_SCANNED`` records per split.

The sizing rule is ``domain.data_shape``'s. A choice that looks wrong gets a hint (images far
larger than the input, a class with a handful of images); a ``--num-classes`` that disagrees
with the class map is a ``UserError``. Data it cannot read is left to the preflight, which
names the problem.
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import json
import os

from domain import class_map, spans
from domain import data_shape as rule
from domain.features import SPLITS
from domain.records import compression
from pipeline.config import FROM_DATA, PipelineConfig
from pipeline.preflight import UserError

OPTIONS = {name: "--" + name.replace("_", "-") for name in FROM_DATA}
SAMPLED_IMAGES = 200  # images decoded to size the input when there is no ingest manifest
LABELS_SCANNED = 20_000  # records per split whose labels are read (as the preflight's)


@dataclasses.dataclass(frozen=True)
class Seen:
    """What the data says about its images and classes, and where that came from."""
    median_side: float | None = None
    colour: int = 0
    images: int = 0
    classes: list[str] | None = None  # names in id order (class map), or None
    num_labels: int = 0  # int labels: the highest id + 1; string labels: distinct values
    train_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    shape_source: str = ""
    class_source: str = ""


@dataclasses.dataclass(frozen=True)
class Choice:
    """The resolved input and classes, why, and hints about choices that look wrong."""
    shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]
    reason: str
    hints: tuple[str, ...] = ()

    def line(self) -> str:
        names = list(self.class_names)
        shown = f" ({', '.join(names[:8])}{', …' if len(names) > 8 else ''})" if names else ""
        return (f"Input {'×'.join(map(str, self.shape))}, {self.num_classes} classes{shown}: "
                f"{self.reason}")


def resolve(config: PipelineConfig) -> tuple[PipelineConfig, Choice | None]:
    """``config`` with its ``from_data`` options resolved, and the ``Choice``; ``(config,
    None)`` when the data cannot be read (the preflight then says why). Raises ``UserError``
    when ``--num-classes`` disagrees with the data's class map."""
    missing = config.from_data
    if not config.data_root or (not missing and config.data_root == config.default_data_root):
        return config, _choice(config, [], Seen(), "the embedded digits")
    seen = observe(config, missing)
    if seen is None:
        return config, None
    _check_classes(config, seen)
    values = _values(config, seen, missing)
    if (config.class_names or seen.classes is None or config.label_format != "int"
            or "num_classes" not in missing and len(seen.classes) != config.num_classes):
        names = config.class_names
    else:
        names = tuple(seen.classes)
    resolved = dataclasses.replace(config, class_names=names, **values)
    return resolved, _choice(resolved, missing, seen)


def _values(config: PipelineConfig, seen: Seen, missing: list[str]) -> dict[str, int]:
    values = {}
    if "image_height" in missing or "image_width" in missing:
        side = config.image_height or config.image_width or (
            rule.input_side(seen.median_side, config.backbone) if seen.median_side else 0)
        values.update({name: side for name in ("image_height", "image_width")
                       if name in missing})
    if "image_channels" in missing and seen.images:
        values["image_channels"] = rule.input_channels(seen.colour, seen.images)
    if "num_classes" in missing:
        values["num_classes"] = (len(config.class_names) or len(seen.classes or [])
                                 or seen.num_labels)
    return {name: value for name, value in values.items() if value}


def _check_classes(config: PipelineConfig, seen: Seen) -> None:
    if seen.classes is None or not config.num_classes or config.label_format != "int":
        return
    if len(seen.classes) != config.num_classes:
        raise UserError(f"--num-classes {config.num_classes} disagrees with the data: "
                        f"{os.path.join(config.data_root, class_map.CLASS_MAP)} has "
                        f"{len(seen.classes)} classes ({', '.join(seen.classes[:10])}); leave "
                        "--num-classes unset (0: from the data) or make them agree")


def _choice(config: PipelineConfig, missing: list[str], seen: Seen,
            reason: str = "") -> Choice:
    if not reason:
        sides = {"image_height", "image_width"}
        if sides & set(missing) != sides:  # one side set: the other follows it, not the data
            missing = [name for name in missing if name not in sides]
        taken = [OPTIONS[n] for n in FROM_DATA if n in missing]
        sources = [s for s in (seen.shape_source if set(missing) - {"num_classes"} else "",
                               seen.class_source if "num_classes" in missing else "") if s]
        reason = (f"from {' and '.join(dict.fromkeys(sources))}; set {'/'.join(taken)} to "
                  "override" if taken else "as the options set them")
    return Choice((config.image_height, config.image_width, config.image_channels),
                  config.num_classes, tuple(config.class_names) or tuple(seen.classes or ()),
                  reason, tuple(hints(config, seen)))


def hints(config: PipelineConfig, seen: Seen) -> list[str]:
    """One line per choice that looks wrong."""
    found = []
    side = min(config.image_height, config.image_width)
    if seen.median_side and side and seen.median_side >= rule.LARGE * side:
        found.append(f"hint: the images' median side is {seen.median_side:g} px, "
                     f"{seen.median_side / side:.0f}× the {side} px input: small details are "
                     "lost; if the model is not good enough, try a larger --image-height/"
                     "--image-width (slower) or --backbone mobilenet_v2")
    few = rule.few_images(seen.train_counts)
    if few:
        listed = ", ".join(f"{name} ({seen.train_counts[name]})" for name in few[:8])
        found.append(f"hint: class{'es' if len(few) > 1 else ''} with fewer than {rule.FEW} "
                     f"training images: {listed}; the model will hardly learn "
                     f"{'them' if len(few) > 1 else 'it'}: add images (dozens per class)")
    return found


def observe(config: PipelineConfig, missing: list[str]) -> Seen | None:
    """What the class map, the ingest manifest or a sample of the records say; None when the
    data cannot be read."""
    root = config.data_root
    if "://" in root or not os.path.isdir(root):
        return None
    try:
        classes = class_map.read(root)
        folder = _span_folder(config)
    except ValueError:
        return None
    manifest = _manifest(os.path.join(root, folder))
    images = (manifest or {}).get("images") or {}
    shape_needed = bool(set(missing) - {"num_classes"})
    labels_needed = "num_classes" in missing and classes is None and not config.class_names
    counts = (manifest or {}).get("counts", {}).get("train", {})
    where = f"the ingest manifest{' of ' + folder.replace('-', ' ') if folder else ''}"
    if images.get("count") and not labels_needed:
        return Seen(images["median_side"], images["colour"], images["count"], classes, 0,
                    counts, f"{where} (median side {images['median_side']:g} px, "
                    f"{images['colour'] / images['count']:.0%} in colour)",
                    class_map.CLASS_MAP)
    if not shape_needed and not labels_needed:
        return Seen(images.get("median_side"), images.get("colour", 0), images.get("count", 0),
                    classes, 0, counts, where, class_map.CLASS_MAP)
    sampled = _sample(config, folder, classes)
    if sampled is None:
        return None
    return dataclasses.replace(sampled, classes=classes, train_counts=counts or
                               sampled.train_counts, class_source=class_map.CLASS_MAP
                               if classes is not None else sampled.class_source)


def _span_folder(config: PipelineConfig) -> str:
    if not config.spans:
        return ""
    resolved = spans.resolve(config.data_root, spans.split_patterns(True), config.span)
    return f"span-{resolved.span}"


def _manifest(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _sample(config: PipelineConfig, folder: str, classes: list[str] | None) -> Seen | None:
    """Decodes the first ``SAMPLED_IMAGES`` images and reads up to ``LABELS_SCANNED`` labels
    per split; None when a split has no readable tf.Examples with the image and label keys."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    shapes, labels, train, decoded = [], set(), collections.Counter(), 0
    for split in SPLITS:
        files = sorted(f for f in glob.glob(os.path.join(config.data_root, folder, split, "*"))
                       if os.path.isfile(f))
        scanned = 0
        for path in files:
            try:
                for record in tf.data.TFRecordDataset(
                        path, compression_type=compression(path)).take(
                            LABELS_SCANNED - scanned).as_numpy_iterator():
                    features = tf.train.Example.FromString(record).features.feature
                    label = _label(features, config)
                    if label is None or config.image_key not in features:
                        return None
                    labels.add(label)
                    train[label] += split == "train"
                    if decoded < SAMPLED_IMAGES:
                        decoded += 1  # an undecodable image is the ImageValidator's to report
                        shapes += [s for s in [_shape(features[config.image_key], config)] if s]
                    scanned += 1
            except (tf.errors.OpError, ValueError, DecodeError):  # not TFRecords of tf.Examples
                return None
        if not scanned or not shapes:
            return None
    names = classes or []
    counts = {(names[i] if isinstance(i, int) and i < len(names) else str(i)): n
              for i, n in train.items()}
    num_labels = (max(labels) + 1) if config.label_format == "int" else len(labels)
    return Seen(rule.image_stats(shapes).get("median_side"), sum(c for *_, c in shapes),
                len(shapes), None, num_labels, counts,
                f"a sample of {len(shapes)} decoded images "
                f"(median side {rule.image_stats(shapes)['median_side']:g} px)",
                f"the labels of the records ({sum(train.values())} train)")


def _label(features, config: PipelineConfig):
    if config.label_key not in features:
        return None
    feature = features[config.label_key]
    if config.label_format == "int":
        return int(feature.int64_list.value[0]) if feature.int64_list.value else None
    return (feature.bytes_list.value[0].decode("utf-8", "replace") if feature.bytes_list.value
            else None)


def _shape(feature, config: PipelineConfig) -> tuple[int, int, bool] | None:
    """``(height, width, in colour)`` of one image feature; None if it does not decode."""
    import tensorflow as tf
    if config.image_format == "raw":
        return config.raw_height, config.raw_width, config.raw_channels >= 3
    try:
        image = tf.io.decode_image(feature.bytes_list.value[0], expand_animations=False)
    except (tf.errors.OpError, IndexError):
        return None
    height, width, channels = image.shape
    if channels < 3:
        return height, width, False
    small = tf.image.resize(tf.cast(image[..., :3], tf.float32), (32, 32))
    spread = tf.reduce_max(tf.abs(small[..., :2] - small[..., 1:]))
    return height, width, bool(spread > rule.GREY_SPREAD)


def require_readable(config: PipelineConfig) -> None:
    """Raises ``ValueError`` naming the options to set when some come from the data and it
    cannot be read here (an object store, a volume not mounted on this machine)."""
    missing = [OPTIONS[n] for n in config.from_data]
    if missing:
        raise ValueError(f"--data-root {config.data_root} cannot be read here, so the model's "
                         f"input cannot come from the data: set {' '.join(missing)}")
