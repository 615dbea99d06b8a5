"""Distillation and TFLite benchmarks (``make bench``): a small student with and without a
larger teacher, and what its TFLite exports keep, on photo-like images.

Photo-like shapes (``tools/make_shapes.py``: 3 classes, 40-300 px, JPEG/PNG, RGB/grey/RGBA)
decoded at 48x48x3 as the pipeline does. For each of ``SEEDS`` (each seed makes other images
and initialises the models differently):
(a) a teacher (the default CNN at width 64) is trained for three times the student's steps,
    then the same student (width 8: about 1/50 of the teacher's weights) from the same initial
    weights, once on
    the labels alone and once with the teacher (``modules.distill.Distiller``, temperature 4,
    labels' weight 0.5); their held-out accuracies and the difference, then the mean and
    standard deviation of the differences over the seeds (honest: a spread as large as the
    mean is no evidence);
(b) the default seed's teacher exported as TFLite float16, dynamic_int8 and int8
    (``modules.tflite``): held-out accuracy against Keras', file size against the float32
    weights, and single-image latency against the Keras model's on this CPU.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.bench_model import machine, write_results  # noqa: E402
from make_shapes import encoded_shapes  # noqa: E402
from domain.features import ImageSpec  # noqa: E402
from modules.distill import Distiller  # noqa: E402
from modules.model import build_model, compile_model, learning_rate  # noqa: E402
from modules.preprocessing import decode_images  # noqa: E402
from modules.tflite import LiteClassifier, tflite_bytes  # noqa: E402

SEEDS = (42, 1, 2, 3, 4)
SPEC = ImageSpec("image", "label", 48, 48, 3, 3)
TRAIN, HELD_OUT, STEPS, BATCH = 900, 450, 600, 32
TEACHER_STEPS = 3 * STEPS  # a teacher trains longer than its student, as it does in practice
TEACHER_WIDTH, STUDENT_WIDTH = 64, 8


def shapes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` photo-like images decoded as the pipeline does, and their class ids."""
    encoded, labels = encoded_shapes(n, SPEC.num_classes, seed)
    return decode_images(tf.constant(encoded), SPEC).numpy(), labels


def rate(steps: int):
    """The pipeline's default schedule: warm-up, then cosine decay over ``steps``."""
    return learning_rate("warmup_cosine", 3e-3, steps)


def fit(model, images, labels, seed: int, steps: int = STEPS) -> None:
    batches = (tf.data.Dataset.from_tensor_slices((images, labels))
               .shuffle(len(images), seed=seed).repeat().batch(BATCH))
    model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0)


def accuracy(model, images, labels) -> float:
    return float(np.mean(model.predict(images, verbose=0).argmax(1) == labels))


def one_seed(seed: int) -> dict:
    """Teacher, student alone and distilled student on one seed's images."""
    images, labels = shapes(TRAIN, seed)
    held, held_labels = shapes(HELD_OUT, seed + 1000)
    keras.utils.set_random_seed(seed)
    teacher = build_model(SPEC, rate(TEACHER_STEPS), width=TEACHER_WIDTH)
    fit(teacher, images, labels, seed, TEACHER_STEPS)
    keras.utils.set_random_seed(seed + 1)
    alone = build_model(SPEC, rate(STEPS), width=STUDENT_WIDTH)
    taught = build_model(SPEC, rate(STEPS), width=STUDENT_WIDTH)
    taught.set_weights(alone.get_weights())
    fit(alone, images, labels, seed)
    distiller = Distiller(taught, teacher, temperature=4.0, alpha=0.5)
    compile_model(distiller, rate(STEPS))
    fit(distiller, images, labels, seed)
    return {"seed": seed, "teacher": accuracy(teacher, held, held_labels),
            "alone": accuracy(alone, held, held_labels),
            "taught": accuracy(taught, held, held_labels),
            "weights": (teacher.count_params(), alone.count_params()),
            "models": (teacher, images[:200], held, held_labels)}


def median_ms(run, times: int = 100) -> float:
    run()
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return 1000 * statistics.median(samples)


def tflite_rows(model, calibration, held, held_labels) -> list[str]:
    """Each TFLite mode of ``model`` against Keras: accuracy, size, latency of one image."""
    keras_accuracy = accuracy(model, held, held_labels)
    keras_kb = model.count_params() * 4 / 1024
    one = held[:1]
    call = tf.function(lambda images: model(images, training=False))  # graph, not eager
    keras_ms = median_ms(lambda: call(one))
    rows = ["| model | held-out accuracy | size KB | ms per image |", "|---|---|---|---|",
            f"| Keras float32 | {keras_accuracy:.3f} | {keras_kb:.0f} (weights) | "
            f"{keras_ms:.2f} |"]
    for mode in ("float16", "dynamic_int8", "int8"):
        content = tflite_bytes(model, SPEC, mode, calibration)
        lite = LiteClassifier(content)
        lite_accuracy = float(np.mean(lite.probabilities(held).argmax(1) == held_labels))
        kb = len(content) / 1024
        rows.append(f"| TFLite {mode} | {lite_accuracy:.3f} "
                    f"({lite_accuracy - keras_accuracy:+.3f}) | {kb:.0f} ({kb / keras_kb:.0%}) "
                    f"| {1000 * lite.seconds_per_image(held[0]):.2f} |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results-distill.md")
    parser.add_argument("--seeds", type=int, default=len(SEEDS))
    args = parser.parse_args(argv)
    runs = []
    for seed in SEEDS[:args.seeds]:
        runs.append(one_seed(seed))
        print(f"seed {seed}: teacher {runs[-1]['teacher']:.3f}, student alone "
              f"{runs[-1]['alone']:.3f}, taught {runs[-1]['taught']:.3f}", file=sys.stderr)
    gains = [run["taught"] - run["alone"] for run in runs]
    spread = statistics.stdev(gains) if len(gains) > 1 else float("nan")
    teacher_weights, student_weights = runs[0]["weights"]
    lines = ["# Distillation and TFLite on photo-like shapes", "", f"Machine: {machine()}", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: 3 classes, "
             f"{TRAIN} training and {HELD_OUT} held-out images at 48x48x3, batches of {BATCH}, "
             "the pipeline's warm-up and cosine schedule from 3e-3. Teacher: CNN width "
             f"{TEACHER_WIDTH} ({teacher_weights:,} weights), {TEACHER_STEPS} steps; student: "
             f"width {STUDENT_WIDTH} ({student_weights:,}), {STEPS} steps, the same initial "
             "weights with and without the teacher (temperature 4, labels' weight 0.5).", "",
             "## (a) The student with and without the teacher", "",
             "| seed | teacher | student alone | student taught | difference |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['teacher']:.3f} | {r['alone']:.3f} | {r['taught']:.3f} | "
              f"{r['taught'] - r['alone']:+.3f} |" for r in runs]
    lines += ["", f"- Difference over {len(runs)} seeds: {statistics.mean(gains):+.3f} ± "
              f"{spread:.3f} (mean ± sd); the teacher helped on "
              f"{sum(g > 0 for g in gains)} of {len(gains)} seeds.", "",
              f"## (b) TFLite exports of the seed-{runs[0]['seed']} teacher "
              "(held-out images; one image, one thread)", ""]
    lines += tflite_rows(*runs[0]["models"])
    write_results(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
