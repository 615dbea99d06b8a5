"""Warm start: steps to reach the gate on a new span, from scratch vs from the served weights.

The served model is trained on span 1 (even-indexed digits) and exported as the Trainer
exports it (``modules.warm_start.export_warm_start``). Span 2 is new data: the odd-indexed digits,
shifted by one pixel. On span 2 the default model trains in chunks of ``CHUNK`` steps, from
scratch and warm-started through ``modules.warm_start.warm_start`` (the Trainer's code path),
and is evaluated on span 2's held-out fifth after each chunk until its accuracy reaches the
default gate (``min_accuracy``). Several seeds; both arms of a seed in this one run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.bench_model import write_results  # noqa: E402
from domain.features import ImageSpec  # noqa: E402
from modules.model import build_model  # noqa: E402
from modules.warm_start import export_warm_start, warm_start  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402
from pipeline.default_data import EVAL_EVERY  # noqa: E402

CHUNK = 25
MAX_STEPS = 1500
SEEDS = (1, 2, 3)


def spans() -> dict[int, tuple]:
    """``{span: (train_x, train_y, eval_x, eval_y)}`` from scikit-learn's digits."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    result = {}
    for span, parity in ((1, 0), (2, 1)):
        index = np.arange(len(images))[np.arange(len(images)) % 2 == parity]
        x, y = images[index], digits.target[index]
        if span == 2:
            x = np.roll(x, 1, axis=2)  # new data: the same task, slightly different images
        held_out = np.arange(len(x)) % EVAL_EVERY == 0
        result[span] = (x[~held_out], y[~held_out], x[held_out], y[held_out])
    return result


def steps_to_gate(model, data: tuple, gate: float, batch: int, seed: int) -> tuple[int, float]:
    """Trains ``CHUNK`` steps at a time until eval accuracy >= ``gate``; (steps, seconds)."""
    train_x, train_y, eval_x, eval_y = data
    dataset = (tf.data.Dataset.from_tensor_slices((train_x, train_y))
               .shuffle(len(train_x), seed=seed).repeat().batch(batch))
    steps, start = 0, time.perf_counter()
    while steps < MAX_STEPS:
        if model.evaluate(eval_x, eval_y, verbose=0)[1] >= gate:
            break
        model.fit(dataset, steps_per_epoch=CHUNK, epochs=1, verbose=0)
        steps += CHUNK
    return steps, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results-warm-start.md")
    args = parser.parse_args(argv)
    config = PipelineConfig(image_height=8, image_width=8, image_channels=1).trainer_config()
    config.update(learning_rate=PipelineConfig.learning_rate, batch_size=PipelineConfig.batch_size)
    spec = ImageSpec.from_custom_config(config)
    gate, data = PipelineConfig.min_accuracy, spans()
    rows = []
    with tempfile.TemporaryDirectory() as served:
        tf.keras.utils.set_random_seed(0)
        model = build_model(spec, config["learning_rate"])
        served_steps, _ = steps_to_gate(model, data[1], gate, config["batch_size"], 0)
        export_warm_start(model, served, config, None)
        for seed in SEEDS:
            result = []
            for warm in (False, True):
                tf.keras.utils.set_random_seed(seed)
                model = build_model(spec, config["learning_rate"])
                if warm and not warm_start(model, served, config)["warm_started"]:
                    raise RuntimeError("warm start refused the served model")
                result.append(steps_to_gate(model, data[2], gate, config["batch_size"], seed))
            rows.append((seed, *result[0], *result[1]))
    lines = ["## Warm start: steps to reach the gate on a new span", "",
             f"Default CNN, batch {config['batch_size']}, learning rate "
             f"{config['learning_rate']}, gate: eval accuracy >= {gate}, evaluated every "
             f"{CHUNK} steps (cap {MAX_STEPS}). The served model took {served_steps} steps on "
             "span 1. Span 2: new, shifted digits.", "",
             "| seed | from scratch: steps | seconds | warm start: steps | seconds |",
             "|---|---|---|---|---|"]
    lines += [f"| {seed} | {s0} | {t0:.1f} | {s1} | {t1:.1f} |" for seed, s0, t0, s1, t1 in rows]
    lines += ["", f"Mean steps: from scratch {np.mean([r[1] for r in rows]):.0f}, warm start "
              f"{np.mean([r[3] for r in rows]):.0f}.", ""]
    write_results(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
