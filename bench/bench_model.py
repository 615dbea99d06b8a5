"""Model and serving benchmarks; writes a Markdown table (``make bench`` -> bench/results.md).

On photo-like 224x224 JPEGs (``tools/make_shapes.py``, re-encoded), through the pipeline:
1. Transform's output bytes per image against the encoded input's (target <= 1.5x).
2. Trainer input pipeline (``modules.data.input_fn`` on Transform's output) in images/s,
   against a reference: reading and decoding the same images from the raw TFRecords
   ImageValidator wrote. Not a ceiling (the input_fn reads Transform's output and can be
   faster), so no target.
3. Latency of the pushed model's raw-image-bytes signature against the bare Keras model on
   pre-decoded pixels (same architecture, in-process), per batch.
4. The same comparison for MobileNetV2 at 224x224 (random weights, no pipeline run).

Every ratio compares two numbers measured in this one run: this machine is noisy.
"""
from __future__ import annotations

import argparse
import glob
import io
import os
import platform
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from make_shapes import write_shapes  # noqa: E402
from domain.features import RAW_SIGNATURE, SPLITS, ImageSpec  # noqa: E402
from modules.model import build_model  # noqa: E402
from modules.preprocessing import decode_images  # noqa: E402
from pipeline import local_runner  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402
from domain.mlmd_queries import latest_artifact, metadata_store  # noqa: E402
from domain.records import compression  # noqa: E402

BATCH = 32
ROUNDS = 5
SIDE = 224


def best_rate(dataset: tf.data.Dataset, batches: int) -> float:
    """Images/s: the median of ``ROUNDS`` timed passes of ``batches`` batches, after warm-up."""
    iterator = iter(dataset)
    for _ in range(20):
        next(iterator)
    rates = []
    for _ in range(ROUNDS):
        start, images = time.perf_counter(), 0
        for _ in range(batches):
            features, _ = next(iterator)
            images += int(tf.shape(tf.nest.flatten(features)[0])[0])
        rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates)


def latency_ms(fn, arg, repeats: int = 30) -> float:
    """Median wall time of ``fn(arg)`` in milliseconds, after warm-up."""
    for _ in range(3):
        fn(arg)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def input_pipeline(config: PipelineConfig) -> dict:
    """Trainer input_fn vs raw read+decode, on the run's own files."""
    import tensorflow_transform as tft
    from tfx.components.trainer.fn_args_utils import DataAccessor
    from tfx.components.util import tfxio_utils
    from tfx.types import artifact_utils, standard_artifacts

    from modules.data import input_fn

    store = metadata_store(config.metadata_path)
    raw_files = glob.glob(os.path.join(latest_artifact(store, "Examples", "ImageValidator").uri,
                                       "Split-train", "*"))
    transformed = latest_artifact(store, "Examples", "Transform").uri
    artifact = standard_artifacts.Examples()
    artifact.uri = transformed
    artifact.split_names = artifact_utils.encode_split_names(list(SPLITS))
    accessor = DataAccessor(tfxio_utils.get_tf_dataset_factory_from_artifact([artifact], []),
                            None, None)
    tft_output = tft.TFTransformOutput(
        latest_artifact(store, "TransformGraph", "Transform").uri)
    files = [os.path.join(transformed, "Split-train", "*")]
    spec = ImageSpec.from_custom_config(config.transform_config())

    feature_spec = {config.image_key: tf.io.FixedLenFeature([], tf.string),
                    config.label_key: tf.io.FixedLenFeature([], tf.int64)}

    def parse_and_decode(serialized):
        parsed = tf.io.parse_example(serialized, feature_spec)
        return decode_images(parsed[config.image_key], spec), parsed[config.label_key]

    reference = (tf.data.TFRecordDataset(raw_files, compression_type=compression(raw_files[0]),
                                         num_parallel_reads=tf.data.AUTOTUNE)
                 .repeat().batch(BATCH)
                 .map(parse_and_decode, num_parallel_calls=tf.data.AUTOTUNE)
                 .prefetch(tf.data.AUTOTUNE))
    results = {"reference: raw TFRecord read + parse + decode": best_rate(reference, 100)}
    for cache in (False, True):
        dataset = input_fn(files, accessor, tft_output, spec, BATCH, cache=cache, seed=0)
        results[f"Trainer input_fn (cache={cache})"] = best_rate(dataset, 100)
    return results


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def serving_latency(spec: ImageSpec, model, raw_fn, fmt: str) -> dict:
    """Raw-bytes path vs the bare model on pre-decoded pixels, batch of ``BATCH`` images."""
    rng = np.random.default_rng(0)
    shape = spec.shape[:2] + ((spec.channels,) if spec.channels == 3 else ())
    images = tf.constant([_encode(rng.integers(0, 256, shape, dtype=np.uint8), fmt)
                          for _ in range(BATCH)])
    pixels = decode_images(images, spec)
    bare = tf.function(lambda x: model(x, training=False))
    return {"raw bytes -> classes": latency_ms(raw_fn, images),
            "bare Keras model on decoded pixels": latency_ms(bare, pixels)}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Python "
            f"{platform.python_version()}, TensorFlow {tf.__version__}, "
            f"GPUs: {len(tf.config.list_physical_devices('GPU'))}")


def write_results(path: str, lines: list[str]) -> None:
    """Writes a benchmark's Markdown section to ``path`` (``make bench`` joins them) and
    prints it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")
    print("\n".join(lines))


def jpeg_folder(out: str, per_class: int) -> float:
    """Photo-like shapes re-encoded as SIDE x SIDE RGB JPEGs (quality 90) in ``out/<class>/``;
    returns their mean size in bytes."""
    from PIL import Image
    sizes = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in write_shapes(tmp, per_class, 3, seed=0):
            target = os.path.join(out, os.path.relpath(os.path.splitext(path)[0], tmp) + ".jpg")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            Image.open(path).convert("RGB").resize((SIDE, SIDE)).save(target, quality=90)
            sizes.append(os.path.getsize(target))
    return statistics.mean(sizes)


def transformed_bytes_per_image(config: PipelineConfig) -> float:
    """Transform's output (both splits, as written) per example."""
    store = metadata_store(config.metadata_path)
    root = latest_artifact(store, "Examples", "Transform").uri
    files = glob.glob(os.path.join(root, "Split-*", "*"))
    count = sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))
    return sum(os.path.getsize(f) for f in files) / count


def main(argv=None) -> int:
    from ops.ingest import ingest
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results.md")
    args = parser.parse_args(argv)
    lines = ["# Model and serving benchmarks", "", f"Machine: {machine()}", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; medians of "
             f"{ROUNDS} passes; batch {BATCH}.", ""]
    with tempfile.TemporaryDirectory() as work:
        encoded = jpeg_folder(os.path.join(work, "images"), 100)
        ingest(os.path.join(work, "images"), os.path.join(work, "data"), progress=False)
        config = PipelineConfig(work_dir=work, data_root=os.path.join(work, "data"),
                                image_height=SIDE, image_width=SIDE, image_channels=3,
                                num_classes=3, train_steps=10, eval_steps=2, min_accuracy=0.0)
        outcome = local_runner.run(config)
        transformed = transformed_bytes_per_image(config)
        rates = input_pipeline(config)
        reference = next(iter(rates.values()))
        lines += [f"## Transformed data ({SIDE}x{SIDE} RGB JPEGs, 300 photo-like images)", "",
                  "| bytes per image | encoded input | Transform output | output / input |",
                  "|---|---:|---:|---:|",
                  f"| mean | {encoded:,.0f} | {transformed:,.0f} | {transformed / encoded:.2f}x |",
                  "", f"Target <= 1.5x: {'met' if transformed <= 1.5 * encoded else 'MISSED'}.",
                  "", f"## Trainer input pipeline ({SIDE}x{SIDE}x3 JPEG)", "",
                  "| pipeline | images/s | vs reference |", "|---|---:|---:|"]
        lines += [f"| {name} | {rate:,.0f} | {rate / reference:.2f}x |"
                  for name, rate in rates.items()]
        lines += ["", "The reference reads the raw TFRecords, the input_fn Transform's "
                  "output: a comparison, not a ceiling (no target)."]
        spec = ImageSpec.from_custom_config(config.transform_config())
        pushed = tf.saved_model.load(outcome.pushed_path)
        signature = pushed.signatures[RAW_SIGNATURE]
        tables = {f"pushed CNN ({SIDE}x{SIDE}x3 JPEG)": serving_latency(
            spec, build_model(spec), lambda images: signature(image_bytes=images), "JPEG")}
    big = ImageSpec("image", "label", 224, 224, 3, 10)
    mobilenet = build_model(big, backbone="mobilenet_v2")
    tables["MobileNetV2 (224x224x3 JPEG, in-process)"] = serving_latency(
        big, mobilenet, tf.function(lambda images: mobilenet(decode_images(images, big))),
        "JPEG")
    for title, latencies in tables.items():
        bare = latencies["bare Keras model on decoded pixels"]
        lines += ["", f"## Serving latency: {title}", "",
                  "| path | ms per batch | vs bare model |", "|---|---:|---:|"]
        lines += [f"| {name} | {ms:.2f} | {ms / bare:.2f}x |" for name, ms in latencies.items()]
    write_results(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
