"""ImageValidator: decode every image as Transform will, report and drop the undecodable ones.

Sits between ExampleGen and the rest of the pipeline. Each bad record is named (split, file,
its index in the file, ``id_key`` feature or image hash) with the cause in words; the
component fails with that list when the bad fraction of any split exceeds
``max_bad_fraction``, so nothing is dropped silently. (No ``from __future__ import annotations`` here: TFX reads
the component's type annotations at run time.)
"""

import functools
import hashlib
import json
import os

import apache_beam as beam
from tfx import v1 as tfx
from tfx.dsl.component.experimental.annotations import (BeamComponentParameter,
                                                        InputArtifact, OutputArtifact,
                                                        Parameter)
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts

from domain.features import ImageSpec
from domain.records import compression

REPORT = "bad_images-{split}.json"  # at the artifact's root: Split-*/ holds records only
SHOWN = 10  # bad records listed in an error message
BATCH = 64  # images decoded in one TensorFlow call


class BadImageError(ValueError):
    """More undecodable images than the configured fraction allows."""


class _CheckImages(beam.DoFn):
    """Batches of ``(file, index, serialized example)`` -> each example whose image decodes, or
    to ``bad`` a description of it. A batch's images decode in one TensorFlow call; only a
    batch that fails is decoded again image by image, to name the bad ones."""

    def __init__(self, spec: ImageSpec, split: str, id_key: str):
        self._spec, self._split, self._id_key = spec, split, id_key

    def setup(self):
        import tensorflow as tf

        from modules.preprocessing import decode_failure
        self._tf, self._failure = tf, decode_failure
        self._decode = _decoder(self._spec)

    def _feature_problem(self, features) -> str | None:
        """What is wrong with the image feature short of decoding it."""
        spec = self._spec
        if spec.image_key not in features:
            return f"no '{spec.image_key}' feature"
        feature = features[spec.image_key]
        if spec.image_format == "raw":
            values = feature.float_list.value or feature.int64_list.value
            expected = spec.raw_shape[0] * spec.raw_shape[1] * spec.raw_shape[2]
            return None if len(values) == expected else (
                f"{len(values)} pixel values, expected {expected} ({spec.raw_shape})")
        if len(feature.bytes_list.value) != 1:
            return f"{len(feature.bytes_list.value)} images in the feature, expected 1"
        return None

    def _decode_problems(self, images: list[bytes]) -> list[str | None]:
        """Why each image does not decode (``None``: it does)."""
        try:
            self._decode(self._tf.constant(images, self._tf.string))
            return [None] * len(images)
        except self._tf.errors.InvalidArgumentError as err:
            if len(images) == 1:
                return [self._failure(err.message, images[0])]
        return [problem for image in images for problem in self._decode_problems([image])]

    def process(self, batch):
        examples = [(filename, index, record,
                     self._tf.train.Example.FromString(record).features.feature)
                    for filename, index, record in batch]
        problems = [self._feature_problem(features) for *_, features in examples]
        if self._spec.image_format != "raw":
            encoded = [i for i, problem in enumerate(problems) if problem is None]
            images = [examples[i][3][self._spec.image_key].bytes_list.value[0] for i in encoded]
            for i, problem in zip(encoded, self._decode_problems(images) if images else []):
                problems[i] = problem
        for (filename, index, record, features), problem in zip(examples, problems):
            if problem is None:
                yield record
            else:
                yield beam.pvalue.TaggedOutput("bad", self._bad(filename, index, record,
                                                                features, problem))

    def _bad(self, filename, index, record, features, problem) -> dict:
        ident = (features[self._id_key].bytes_list.value[:1] if self._id_key in features
                 else [])
        if ident:
            name = ident[0].decode("utf-8", "replace")
        else:
            name = "sha256:" + hashlib.sha256(record).hexdigest()[:16]
        return {"split": self._split, "file": os.path.basename(filename), "index": index,
                "record": name, "error": problem}


@functools.lru_cache(maxsize=None)
def _decoder(spec: ImageSpec):
    """``decode_images`` for ``spec`` as one graph, traced once per process (every split's
    DoFn shares it) and without AutoGraph: its control flow is TensorFlow's already."""
    import tensorflow as tf

    from modules.preprocessing import decode_images
    return tf.function(lambda data: decode_images(data, spec), autograph=False,
                       input_signature=[tf.TensorSpec([None], tf.string)])


def _batches(path: str):
    """Lists of up to ``BATCH`` ``(path, index, record)``, every record of one TFRecord file
    (gzip by suffix) in order."""
    import tensorflow as tf
    dataset = tf.data.TFRecordDataset(path, compression_type=compression(path)).batch(BATCH)
    index = 0
    for records in dataset.as_numpy_iterator():
        yield [(path, index + i, record) for i, record in enumerate(records)]
        index += len(records)


def check_fractions(reports: dict[str, dict], max_bad_fraction: float) -> None:
    """Raises ``BadImageError`` naming the bad records if a split has too many."""
    for split, report in sorted(reports.items()):
        total = report["valid"] + len(report["bad"])
        if total and len(report["bad"]) / total > max_bad_fraction:
            listed = "\n".join(f"  {b['file']} record {b['index']} ({b['record']}): {b['error']}"
                               for b in report["bad"][:SHOWN])
            more = len(report["bad"]) - SHOWN
            raise BadImageError(
                f"split '{split}': {len(report['bad'])} of {total} images cannot be decoded, "
                f"more than max_bad_image_fraction={max_bad_fraction}:\n{listed}"
                + (f"\n  ... and {more} more" if more > 0 else ""))


def _write_report(bad: list[dict], valid: int, path: str) -> None:
    """A split's report, one small file written whole (no Beam file sink: its temp files
    and finalize stages cost more than the report)."""
    with fileio.open(path, "w") as f:
        f.write(json.dumps({"valid": valid, "bad": bad}, indent=1) + "\n")


FINGERPRINT = "input_fingerprint"  # ExampleGen's fingerprint of the files it read


@component(use_beam=True)
def ImageValidator(
    examples: InputArtifact[standard_artifacts.Examples],
    valid_examples: OutputArtifact[standard_artifacts.Examples],
    image_config: Parameter[str],
    max_bad_fraction: Parameter[float] = 0.0,
    id_key: Parameter[str] = "",
    beam_pipeline: BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """Copies the examples whose image decodes; writes ``bad_images-<split>.json``."""
    spec = ImageSpec.from_custom_config(json.loads(image_config))
    splits = artifact_utils.decode_split_names(examples.split_names)
    valid_examples.split_names = examples.split_names
    for key in ("span", "version"):  # ExampleGen's, kept for lineage and the pusher's record
        if examples.has_custom_property(key):
            valid_examples.set_int_custom_property(key, examples.get_int_custom_property(key))
    if examples.has_custom_property(FINGERPRINT):
        valid_examples.set_string_custom_property(
            FINGERPRINT, examples.get_string_custom_property(FINGERPRINT))
    with beam_pipeline as pipeline:
        for split in splits:
            pattern = os.path.join(artifact_utils.get_split_uri([examples], split), "*")
            out_dir = artifact_utils.get_split_uri([valid_examples], split)
            checked = (pipeline
                       | f"Files[{split}]" >> beam.Create(sorted(fileio.glob(pattern)))
                       | f"Spread[{split}]" >> beam.Reshuffle()
                       | f"Read[{split}]" >> beam.FlatMap(_batches)
                       | f"Check[{split}]" >> beam.ParDo(_CheckImages(spec, split, id_key))
                       .with_outputs("bad", main="valid"))
            # Uncompressed: encoded images do not shrink, and gzip cost about as much as decoding.
            _ = checked.valid | f"Write[{split}]" >> beam.io.WriteToTFRecord(
                os.path.join(out_dir, "data_tfrecord"))
            valid_count = checked.valid | f"Count[{split}]" >> beam.combiners.Count.Globally()
            _ = (checked.bad
                 | f"Bad[{split}]" >> beam.combiners.ToList()
                 | f"Report[{split}]" >> beam.Map(
                     _write_report, valid=beam.pvalue.AsSingleton(valid_count),
                     path=os.path.join(valid_examples.uri, REPORT.format(split=split))))
    reports = {}
    for split in splits:
        path = os.path.join(valid_examples.uri, REPORT.format(split=split))
        with tfx.dsl.io.fileio.open(path) as f:
            reports[split] = json.load(f)
    valid_examples.set_int_custom_property(
        "bad_images", sum(len(r["bad"]) for r in reports.values()))
    check_fractions(reports, max_bad_fraction)
