"""Image folders to TFRecords: ``python -m ops.ingest <image dir> <out dir>``.

``<image dir>/<class name>/**/<image>`` becomes sharded TFRecords of tf.Examples (``image``
bytes, ``label`` id, ``label_name``, ``height``, ``width``, ``source_path``, ``sha256``)
under ``<out dir>/[span-N/]{train,eval}/``. Label ids come from the class map
``<out dir>/classes.json`` (``domain.class_map``): the first ingest numbers the classes
by sorted name, later spans keep those ids, give a new class the next id and report a class
with no images (it keeps its id). Records are split by content hash
(so a file stays in its split across re-ingestions) and sharded by hash. Files are checked in
parallel; corrupt, unsupported, oversized or duplicated files are skipped and listed with the
reason in ``manifest.json`` beside the records, never crashing the run. The command fails (exit
2, nothing written) if the folder is missing, if a class has no images, if the same content
appears under two classes, or if more than ``--max-skipped-fraction`` of the files were
skipped. Images that TensorFlow
cannot decode as they are (CMYK, 16-bit, palette with transparency...) are re-encoded as PNG.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import io
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator

from domain import class_map, data_shape
from domain.features import MAX_PIXELS, SPLITS
from domain.records import write_splits

KEEP_FORMATS = {"JPEG": ("L", "RGB"), "PNG": ("L", "RGB", "RGBA", "LA"), "GIF": ("L", "P"),
                "BMP": ("L", "RGB")}
CHUNK = 16  # files a checking process takes at a time
IN_FLIGHT = 4  # chunks submitted per process and not yet written


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
                buffer = io.BytesIO()
                image.convert("RGBA" if "A" in mode or "transparency" in image.info
                              else "RGB").save(buffer, format="PNG")
                data = buffer.getvalue()
    except UnidentifiedImageError:
        result.skipped = "not an image"
        return result
    except (OSError, SyntaxError, ValueError) as err:
        result.skipped = f"corrupt {fmt}: {err}"
        return result
    result.data, result.height, result.width = data, height, width
    return result


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


def _example(item: Checked, label: int) -> bytes:
    import tensorflow as tf

    def feature(value):
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[value if isinstance(value, bytes) else value.encode()]))

    # Deterministic: the feature map in key order, so reruns write the same bytes.
    return tf.train.Example(features=tf.train.Features(feature={
        "image": feature(item.data), "label": feature(label), "label_name": feature(item.label_name),
        "height": feature(item.height), "width": feature(item.width),
        "source_path": feature(item.path), "sha256": feature(item.sha256),
    })).SerializeToString(deterministic=True)


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
           progress: bool = True) -> dict:
    """Converts ``image_dir``; returns the manifest (also written as ``manifest.json``).

    Images stream from the checking processes to the shard writers in file order, a few
    chunks in flight: memory stays flat in the number of images."""
    from tqdm import tqdm

    files = scan(image_dir)
    jobs = [(path, name) for name, paths in files.items() for path in paths]
    root = os.path.join(out_dir, f"span-{span}") if span is not None else out_dir
    # Another span's ingest may extend the map meanwhile; without spans the records are the
    # data root, written once (by rename: nothing may be in it before).
    with class_map.locked(out_dir) if span is not None else contextlib.nullcontext():
        if os.path.exists(root) and os.listdir(root):
            raise IngestError(f"{root} exists and is not empty")
        _adopt_legacy_ids(out_dir)
        classes, added, missing = class_map.extend(out_dir, list(files))
        labels = {name: classes.index(name) for name in files}
        counts = {split: {name: 0 for name in labels} for split in SPLITS}
        skipped, shapes = [], []
        with ProcessPoolExecutor(workers) as pool:
            checked = tqdm(_check_all(pool, image_dir, jobs, max_pixels,
                                      IN_FLIGHT * (workers or os.cpu_count() or 1)),
                           total=len(jobs), disable=not progress, desc="images", unit="img")
            write_splits(root, _records(checked, labels, counts, skipped, eval_fraction,
                                        max_skipped_fraction, shapes), shards, "data", compress)
        manifest = {"root": root, "counts": counts, "span": span,
                    "source": os.path.abspath(image_dir), "files": len(jobs), "skipped": skipped,
                    "classes": classes, "added_classes": added, "missing_classes": missing,
                    "images": data_shape.image_stats(shapes)}
        with open(os.path.join(root, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
        class_map.write(out_dir, classes)
    return manifest


def _check_files(root: str, jobs: list[tuple[str, str]], max_pixels: int) -> list[Checked]:
    return [check_file(root, path, name, max_pixels) for path, name in jobs]


def _check_all(pool, root: str, jobs: list[tuple[str, str]], max_pixels: int,
               in_flight: int) -> Iterator[Checked]:
    """``check_file`` of every job, in order, with at most ``in_flight`` chunks of ``CHUNK``
    submitted and not yet consumed. The first are submitted at once, so that the processes
    start before the writer imports TensorFlow."""
    chunks = [jobs[start:start + CHUNK] for start in range(0, len(jobs), CHUNK)]
    pending = collections.deque(pool.submit(_check_files, root, chunk, max_pixels)
                                for chunk in chunks[:in_flight])

    def results():
        for chunk in chunks[in_flight:]:
            yield from pending.popleft().result()
            pending.append(pool.submit(_check_files, root, chunk, max_pixels))
        while pending:
            yield from pending.popleft().result()

    return results()


def _records(checked: Iterable[Checked], labels: dict[str, int], counts: dict, skipped: list,
             eval_fraction: float, max_skipped_fraction: float,
             shapes: list | None = None) -> Iterator[tuple[str, bytes]]:
    """``(split, serialized example)`` of each image kept, counted in ``counts`` (its height,
    width and colour in ``shapes``); the skipped ones go to ``skipped``. Raises
    ``IngestError`` (the writer then keeps nothing) on the same content under two classes,
    at the end on a class with no image or too many skipped."""
    first_seen, total = {}, 0  # sha256 -> (path, class name) of the image kept
    for item in checked:
        total += 1
        if not item.skipped and item.sha256 in first_seen:
            path, name = first_seen[item.sha256]
            if name != item.label_name:
                raise IngestError(f"the same image is labelled '{name}' ({path}) and "
                                  f"'{item.label_name}' ({item.path})")
            item.skipped = f"duplicate of {path}"
        if item.skipped:
            skipped.append({"path": item.path, "reason": item.skipped})
            continue
        first_seen[item.sha256] = (item.path, item.label_name)
        split = split_of(item.sha256, eval_fraction)
        counts[split][item.label_name] += 1
        if shapes is not None:
            shapes.append((item.height, item.width, item.colour))
        yield split, _example(item, labels[item.label_name])
    empty = [name for name in labels if not any(counts[split][name] for split in SPLITS)]
    if empty:
        raise IngestError(f"class folder(s) with no usable image: {', '.join(empty)}")
    if total and len(skipped) / total > max_skipped_fraction:
        raise IngestError(f"{len(skipped)} of {total} files skipped, more than "
                          f"max_skipped_fraction={max_skipped_fraction}: " + "; ".join(
                              f"{s['path']}: {s['reason']}" for s in skipped[:10]))


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
    parser.add_argument("--workers", type=int, help="processes (default: one per core)")
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
                          args.max_skipped_fraction, args.max_pixels)
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
