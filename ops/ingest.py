"""Image folders to TFRecords: ``python -m ops.ingest <image dir> <out dir>``.

``<image dir>/<class name>/**/<image>`` becomes sharded TFRecords of tf.Examples (``image``
bytes, ``label`` id, ``label_name``, ``height``, ``width``, ``source_path``, ``sha256``)
under ``<out dir>/[span-N/]{train,eval}/``. Label ids come from the class map
``<out dir>/classes.json`` (``domain.class_map``): the first ingest numbers the classes
by sorted name, later spans keep those ids, give a new class the next id and report a class
with no images (it keeps its id). Records are split by content hash
(so a file stays in its split across re-ingestions), sharded by hash, and in sha256 order
within a shard (classes mixed, the same on every engine and rerun: ``"order": "sha256"`` in
``manifest.json``). The work is one Beam pipeline (``ops.ingest_beam``): on the DirectRunner
(in process below ``MANY_FILES`` files, else one process per core), on a Dask cluster with ``--engine dask --dask-address
tcp://HOST:PORT``, or on any runner by ``--beam-args``. Corrupt, unsupported, oversized or
duplicated files are skipped and listed with the reason in ``manifest.json`` beside the
records, never crashing the run. The command fails (exit 2, nothing written) if the folder is
missing, if a class has no images, if the same content appears under two classes, or if more
than ``--max-skipped-fraction`` of the files were skipped. Images that TensorFlow cannot
decode as they are (CMYK, 16-bit, palette with transparency...) are re-encoded as PNG.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shlex
import sys
from dataclasses import dataclass

from domain import class_map, data_shape
from domain.features import MAX_PIXELS, SPLITS
from domain.records import staged

KEEP_FORMATS = {"JPEG": ("L", "RGB"), "PNG": ("L", "RGB", "RGBA", "LA"), "GIF": ("L", "P"),
                "BMP": ("L", "RGB")}
ENGINES = ("direct", "dask")
CHUNK = 32  # files one check task takes at a time
DASK_PARTITIONS = 1024  # at most, on Dask: about 4 chunks each below that
# Fewer files are checked in process: Beam's multi-processing DirectRunner costs about 25 s
# more to start on 2 cores and gains about 1.3 ms per image (measured at 600 and 6,000 images).
MANY_FILES = 20_000
# The features in protobuf's deterministic map order (upb's: a key before its prefixes).
FEATURE_ORDER = ("height", "image", "label_name", "label", "sha256", "source_path", "width")


class IngestError(ValueError):
    """The image tree cannot become a training set; the message says why."""


@dataclass
class Checked:
    path: str                 # relative to the image directory
    label_name: str
    sha256: str = ""
    data: bytes = b""
    height: int = 0
    width: int = 0
    colour: bool = False      # not grey (its channels differ: data_shape.GREY_SPREAD)
    recoded: bool = False     # its bytes are the file's re-encoded as PNG
    skipped: str = ""         # the reason, if skipped


def check_file(root: str, path: str, label_name: str, max_pixels: int) -> Checked:
    """Reads and fully decodes one file with Pillow; returns its bytes or why it is skipped."""
    from PIL import Image, UnidentifiedImageError
    with open(os.path.join(root, path), "rb") as f:
        data = f.read()
    result = Checked(path, label_name, hashlib.sha256(data).hexdigest())
    fmt = "image"
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, mode, (width, height) = image.format, image.mode, image.size
            if width * height > max_pixels:
                result.skipped = f"too large: {width}x{height} > max_pixels={max_pixels}"
                return result
            image.load()  # decodes every pixel: truncated files fail here
            result.colour = _in_colour(image)
            if mode not in KEEP_FORMATS.get(fmt, ()):
                data, result.recoded = _as_png(image), True
    except UnidentifiedImageError:
        result.skipped = "not an image"
        return result
    except (OSError, SyntaxError, ValueError) as err:
        result.skipped = f"corrupt {fmt}: {err}"
        return result
    result.data, result.height, result.width = data, height, width
    return result


def _as_png(image) -> bytes:
    """A decoded image TensorFlow cannot decode as it is, as RGB or RGBA PNG bytes."""
    buffer = io.BytesIO()
    image.convert("RGBA" if "A" in image.mode or "transparency" in image.info
                  else "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def image_bytes(root: str, item: Checked) -> bytes:
    """The record's image bytes of a kept file, read again (re-encoded as ``check_file`` did);
    raises ``IngestError`` if the file changed since it was checked."""
    from PIL import Image
    with open(os.path.join(root, item.path), "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != item.sha256:
        raise IngestError(f"{item.path} changed during the ingest; run it again")
    if not item.recoded:
        return data
    with Image.open(io.BytesIO(data)) as image:
        return _as_png(image)


def _in_colour(image) -> bool:
    """Whether an image's pixels have colour (an RGB file of grey pixels is grey), judged on
    a 32x32 thumbnail."""
    from PIL import ImageChops
    if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return False
    thumb = image.convert("RGB").resize((32, 32))
    red, green, blue = thumb.split()
    return max(ImageChops.difference(red, green).getextrema()[1],
               ImageChops.difference(green, blue).getextrema()[1]) > data_shape.GREY_SPREAD


def example(item: Checked, label: int) -> bytes:
    """The serialized tf.Example of a kept image, byte for byte what TensorFlow's
    deterministic serialization writes, without importing it (the pipeline's workers stay
    light)."""
    values = {"image": item.data, "label": label, "label_name": item.label_name,
              "height": item.height, "width": item.width, "source_path": item.path,
              "sha256": item.sha256}
    features = b"".join(_field(1, _field(1, key.encode()) + _field(2, _feature(values[key])))
                        for key in FEATURE_ORDER)
    return _field(1, features)


def _feature(value) -> bytes:
    """A ``tf.train.Feature``: an ``Int64List`` (field 3, packed) or a ``BytesList`` (1)."""
    if isinstance(value, int):
        return _field(3, _field(1, _varint(value)))
    return _field(1, _field(1, value if isinstance(value, bytes) else value.encode()))


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # an int64 below 0 as its two's complement
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def split_of(sha256: str, eval_fraction: float) -> str:
    return "eval" if int(sha256[:8], 16) / 0x100000000 < eval_fraction else "train"


def scan(image_dir: str) -> dict[str, list[str]]:
    """Class name -> its files (relative paths, sorted); hidden files are ignored."""
    if not os.path.isdir(image_dir):
        raise IngestError(f"{image_dir} is not a directory (expected <dir>/<class>/<image>)")
    classes = sorted(d for d in os.listdir(image_dir)
                     if os.path.isdir(os.path.join(image_dir, d)) and not d.startswith("."))
    if not classes:
        raise IngestError(f"{image_dir} has no class folders (expected <dir>/<class>/<image>)")
    files = {}
    for name in classes:
        found = []
        for folder, _, names in os.walk(os.path.join(image_dir, name)):
            found += [os.path.relpath(os.path.join(folder, n), image_dir)
                      for n in names if not n.startswith(".")]
        files[name] = sorted(found)
    return files


def ingest(image_dir: str, out_dir: str, shards: int = 4, compress: bool = False,
           eval_fraction: float = 0.2, span: int | None = None, workers: int | None = None,
           max_skipped_fraction: float = 0.05, max_pixels: int = MAX_PIXELS,
           progress: bool = True, engine: str = "direct", dask_address: str = "",
           beam_args: str = "") -> dict:
    """Converts ``image_dir`` with one Beam pipeline (``ops.ingest_beam``) on ``engine``;
    returns the manifest (also written as ``manifest.json``). The records go to a staging
    folder renamed into place only when the run succeeds and passes every check."""
    files = scan(image_dir)
    jobs = [(index, path, name) for index, (path, name) in enumerate(
        (path, name) for name, paths in files.items() for path in paths)]
    if workers is None:
        workers = 1 if len(jobs) < MANY_FILES else 0
    options = beam_options(engine, workers, dask_address, beam_args, len(jobs))
    root = os.path.join(out_dir, f"span-{span}") if span is not None else out_dir
    # Another span's ingest may extend the map meanwhile; without spans the records are the
    # data root, written once (by rename: nothing may be in it before).
    with class_map.locked(out_dir) if span is not None else contextlib.nullcontext():
        if os.path.exists(root) and os.listdir(root):
            raise IngestError(f"{root} exists and is not empty")
        _adopt_legacy_ids(out_dir)
        classes, added, missing = class_map.extend(out_dir, list(files))
        labels = {name: classes.index(name) for name in files}
        if progress:
            print(f"ingest: {len(jobs)} files of {len(files)} classes, on "
                  f"{' '.join(options)}", file=sys.stderr)
        with staged(root) as staging:
            summary = _run(options, jobs, image_dir, staging, labels, shards, compress,
                           eval_fraction, max_pixels)
            manifest = {"root": root, "span": span, "source": os.path.abspath(image_dir),
                        "files": len(jobs), "classes": classes, "added_classes": added,
                        "missing_classes": missing, "order": "sha256",
                        **_judged(summary, labels, len(jobs), max_skipped_fraction)}
            with open(os.path.join(staging, "manifest.json"), "w") as f:
                json.dump(manifest, f, indent=1, sort_keys=True)
        class_map.write(out_dir, classes)
    return manifest


def beam_options(engine: str, workers: int, dask_address: str, beam_args: str,
                 files: int) -> list:
    """The Beam arguments of ``engine`` as the pipeline's runners build them
    (``PipelineConfig.beam_pipeline_args``): the DirectRunner in process (``workers`` 1) or
    with ``workers`` processes (0: one per core), or the project's DaskRunner at
    ``dask_address`` (``files`` spread over partitions of a few check chunks: the runner's
    default of 128 elements a partition would check thousands of files in one task);
    ``beam_args`` last (another runner: ``--runner=DataflowRunner ...``)."""
    from pipeline.config import PipelineConfig
    if engine not in ENGINES:
        raise IngestError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if (engine == "dask") != bool(dask_address):
        raise IngestError("--engine dask and --dask-address tcp://HOST:PORT go together")
    mode = "dask" if engine == "dask" else "in_process" if workers == 1 else "multi_processing"
    extra = tuple(shlex.split(beam_args))
    try:
        args = PipelineConfig(beam_mode=mode, beam_workers=workers,
                              dask_address=dask_address, beam_args=extra).beam_pipeline_args
    except ValueError as err:
        raise IngestError(str(err)) from err
    # The setup file is for a runner whose workers install the project (--runner=...); on
    # this machine or the Dask cluster it is installed, and building its package takes seconds.
    remote = any(arg.startswith("--runner") for arg in extra)
    args = [arg for arg in args if remote or not arg.startswith("--setup_file=")]
    if engine == "dask" and not any(arg.startswith("--dask_") for arg in extra):
        chunks = -(-files // CHUNK)
        args.insert(1, f"--dask_npartitions={max(1, min(DASK_PARTITIONS, -(-chunks // 4)))}")
    return args


def _run(options: list, jobs: list, image_dir: str, staging: str, labels: dict,
         shards: int, compress: bool, eval_fraction: float, max_pixels: int) -> dict:
    """Runs the pipeline into ``staging``; returns its summary (``ops.ingest_beam``)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from ops import ingest_beam
    with beam.Pipeline(options=PipelineOptions(options)) as pipeline:
        ingest_beam.build(pipeline, jobs, image_dir, staging, labels, shards, compress,
                          eval_fraction, max_pixels)
    path = os.path.join(staging, ingest_beam.SUMMARY)
    with open(path, encoding="utf-8") as f:
        summary = json.load(f)
    os.remove(path)
    return summary


def _judged(summary: dict, labels: dict, files: int, max_skipped_fraction: float) -> dict:
    """The manifest's counts, skipped files (in file order) and image statistics of the
    pipeline's summary. Raises ``IngestError`` on the same content under two classes (the
    first in file order), a class with no image, or too many files skipped."""
    if summary["conflicts"]:
        raise IngestError(summary["conflicts"][0][1])
    counts = {split: dict.fromkeys(labels, 0) for split in SPLITS}
    for split, name, count in summary["counts"]:
        counts[split][name] = count
    empty = [name for name in labels if not any(counts[split][name] for split in SPLITS)]
    if empty:
        raise IngestError(f"class folder(s) with no usable image: {', '.join(empty)}")
    skipped = [{"path": path, "reason": reason} for _, path, reason in summary["skipped"]]
    if files and len(skipped) / files > max_skipped_fraction:
        raise IngestError(f"{len(skipped)} of {files} files skipped, more than "
                          f"max_skipped_fraction={max_skipped_fraction}: " + "; ".join(
                              f"{s['path']}: {s['reason']}" for s in skipped[:10]))
    # one tuple object per distinct shape, repeated: a list of references, not of tuples
    shapes = [shape for *key, count in summary["shapes"] for shape in [tuple(key)] * count]
    return {"counts": counts, "skipped": skipped, "images": data_shape.image_stats(shapes)}


def _adopt_legacy_ids(out_dir: str) -> None:
    """A data root written before class maps existed: its newest span's ingest manifest lists
    the classes in id order; they become the class map, so ids keep their meaning."""
    if not os.path.isdir(out_dir) or class_map.read(out_dir) is not None:
        return
    spans = sorted((int(n[5:]) for n in os.listdir(out_dir)
                    if n.startswith("span-") and n[5:].isdigit()), reverse=True)
    for span in spans:
        path = os.path.join(out_dir, f"span-{span}", "manifest.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                class_map.write(out_dir, json.load(f)["classes"])
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image_dir", help="one sub-folder of images per class")
    parser.add_argument("out_dir", help="the data root the pipeline reads (--data-root)")
    parser.add_argument("--shards", type=int, default=4,
                        help="TFRecord files per split (default: %(default)s)")
    parser.add_argument("--compress", action="store_true", help="GZIP the TFRecords")
    parser.add_argument("--eval-fraction", type=float, default=0.2,
                        help="share of the images held out as the eval split, by content hash "
                             "(default: %(default)s)")
    parser.add_argument("--span", type=int, help="write <out dir>/span-N/ (for retraining)")
    parser.add_argument("--workers", type=int,
                        help="DirectRunner processes, 0: one per core (default: in process "
                             f"below {MANY_FILES:,} files, else one per core)")
    parser.add_argument("--engine", choices=ENGINES, default="direct",
                        help="where the Beam pipeline runs: the DirectRunner on this machine, "
                             "or a Dask cluster (--dask-address; default: %(default)s)")
    parser.add_argument("--dask-address", default="",
                        help="the Dask scheduler of --engine dask (tcp://HOST:PORT); its "
                             "workers need this project installed and the image and output "
                             "folders at the same paths")
    parser.add_argument("--beam-args", default="",
                        help="extra Beam pipeline arguments, last; another runner: "
                             "--beam-args=\"--runner=... ...\" (--setup_file of this project "
                             "is added; its workers must mount both folders at the same paths: "
                             "local paths only, no gs://)")
    parser.add_argument("--max-skipped-fraction", type=float, default=0.05,
                        help="fail, writing nothing, when more of the files are skipped "
                             "(corrupt, unsupported, too large, duplicates; default: "
                             "%(default)s)")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help="skip images with more pixels, before decoding them (default: "
                             "%(default)s)")
    args = parser.parse_args(argv)
    try:
        manifest = ingest(args.image_dir, args.out_dir, args.shards, args.compress,
                          args.eval_fraction, args.span, args.workers,
                          args.max_skipped_fraction, args.max_pixels, engine=args.engine,
                          dask_address=args.dask_address, beam_args=args.beam_args)
    except IngestError as err:
        print(f"ingest: FAILED: {err}", file=sys.stderr)
        return 2
    totals = {split: sum(c.values()) for split, c in manifest["counts"].items()}
    print(f"Wrote {totals['train']} train and {totals['eval']} eval images of "
          f"{len(manifest['classes']) - len(manifest['missing_classes'])} classes to "
          f"{manifest['root']}; {len(manifest['skipped'])} skipped (see manifest.json)")
    if manifest["added_classes"] and len(manifest["added_classes"]) < len(manifest["classes"]):
        print(f"New classes, with the next ids: {', '.join(manifest['added_classes'])}")
    if manifest["missing_classes"]:
        print(f"warning: classes with no image in this span keep their ids: "
              f"{', '.join(manifest['missing_classes'])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
