"""The comparisons users would make (``make bench``): the project against a stock TFX
pipeline and against a plain Keras recipe, back to back, scored on the same held-out images.

One folder of photo-like images (``tools/make_shapes.py``: 3 classes, 40-300 px, JPEG and
PNG, RGB, grey and RGBA) is ingested once with ``python -m ops.ingest``; its eval split is the
held-out set of every side. Then, one after another, each a fresh process from a cold work dir:

1. a stock TFX pipeline written the way TFX's examples write one (``bench/stock_tfx``: the
   standard components, a ``preprocessing_fn`` that decodes the images, a plain Keras
   ``run_fn`` with fixed steps, LocalDagRunner with the examples' Beam options) on the
   ingested records; its Evaluator's accuracy on the eval split;
2. the project: ``python -m pipeline.local_runner`` on the same records (default training
   options, 64x64x3 like the stock sides); its Evaluator's accuracy on the eval split;
3. a plain Keras recipe (``bench/stock_tfx/keras_recipe.py``: ``image_dataset_from_directory``
   and the tutorial's CNN, 10 epochs) on the same files, copied into ``train/`` and ``eval/``
   by ingest's own ``split_of(sha256)``; its ``evaluate`` on ``eval/``.

Ratios: the project's run over the stock pipeline's (both read the ingested records), and
ingest plus the run over the Keras recipe (both start from the image folder). Wall times of
whole processes, imports included; one run each, on a shared machine (load averages shown).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
USER_LEGACY_KERAS = "TF_USE_LEGACY_KERAS" in os.environ

from bench.bench_data import images  # noqa: E402
from bench.bench_learning import target  # noqa: E402
from bench.bench_model import machine, write_results  # noqa: E402
from bench.bench_pipeline import durations, timed_run  # noqa: E402
from domain.mlmd_queries import (executions_since, latest_artifact,  # noqa: E402
                                 metadata_store, seconds)
from ops.ingest import split_of  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402
from pipeline.outcome import latest_outcome  # noqa: E402

# tensorflow_transform sets TF_USE_LEGACY_KERAS=1 when imported (above): every run gets the
# environment a shell would give it instead.
if not USER_LEGACY_KERAS:
    os.environ.pop("TF_USE_LEGACY_KERAS", None)

PER_CLASS = 1000  # images per class, 3 classes
EVAL_FRACTION = 0.2  # ops.ingest's default
STOCK = os.path.join(ROOT, "bench", "stock_tfx")
SPEED_STOCK, SPEED_RECIPE, ACCURACY = 0.4, 0.45, 0.95  # targets (issue 34)
PROJECT_ARGS = ["--image-height", "64", "--image-width", "64", "--image-channels", "3",
                "--num-classes", "3", "--class-names", "circle square triangle"]


def timed(command: list[str], log: str) -> float:
    """Wall seconds of ``command`` (output to ``log``); fails with the log's tail."""
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{' '.join(command[:3])} ... exited {done.returncode}:\n{tail}")
    return time.perf_counter() - start


def split_folder(image_dir: str, out: str) -> dict[str, int]:
    """``image_dir/<class>/<file>`` linked into ``out/{train,eval}/<class>/`` by ingest's
    ``split_of``; returns the count per split."""
    counts = {"train": 0, "eval": 0}
    for name in sorted(os.listdir(image_dir)):
        for file in sorted(os.listdir(os.path.join(image_dir, name))):
            source = os.path.join(image_dir, name, file)
            with open(source, "rb") as f:
                split = split_of(hashlib.sha256(f.read()).hexdigest(), EVAL_FRACTION)
            os.makedirs(os.path.join(out, split, name), exist_ok=True)
            os.link(source, os.path.join(out, split, name, file))
            counts[split] += 1
    return counts


def stock_accuracy(work: str) -> tuple[float, int]:
    """The stock Evaluator's accuracy and example count on the eval split."""
    import tensorflow_model_analysis as tfma
    store = metadata_store(os.path.join(work, "metadata.db"))
    result = tfma.load_eval_result(latest_artifact(store, "ModelEvaluation", "Evaluator").uri)
    metrics = next(m for key, m in result.slicing_metrics if not key)[""][""]
    return (metrics["sparse_categorical_accuracy"]["doubleValue"],
            int(metrics["example_count"]["doubleValue"]))


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def measure(work: str) -> dict:
    """The folder, its ingest and split, then the three runs back to back."""
    started = time.perf_counter()
    image_dir, records, split = (os.path.join(work, d) for d in ("images", "records", "split"))
    images(image_dir, PER_CLASS)
    result = {"load_before": load()}
    result["ingest_s"] = timed([sys.executable, "-m", "ops.ingest", image_dir, records],
                               os.path.join(work, "ingest.log"))
    with open(os.path.join(records, "manifest.json")) as f:
        result["eval_images"] = sum(json.load(f)["counts"]["eval"].values())
    result["split"] = split_folder(image_dir, split)
    stock = os.path.join(work, "stock")
    result["stock_s"] = timed([sys.executable, os.path.join(STOCK, "stock_pipeline.py"),
                               records, stock], os.path.join(work, "stock.log"))
    result["stock_accuracy"], result["stock_eval"] = stock_accuracy(stock)
    result["stock_components"] = {name: seconds(e) for name, e in executions_since(
        metadata_store(os.path.join(stock, "metadata.db")))}
    flags = PROJECT_ARGS + ["--data-root", records, "--work-dir", os.path.join(work, "run")]
    result["project_s"], _ = timed_run(flags)
    result["project_accuracy"] = latest_outcome(PipelineConfig.from_args(flags)).accuracy
    result["project_components"] = durations(os.path.join(work, "run"))
    recipe = os.path.join(work, "recipe")
    result["recipe_s"] = timed([sys.executable, os.path.join(STOCK, "keras_recipe.py"), split,
                                recipe], os.path.join(work, "recipe.log"))
    with open(os.path.join(recipe, "result.json")) as f:
        result["recipe_accuracy"] = json.load(f)["accuracy"]
    result["load_after"], result["took"] = load(), time.perf_counter() - started
    return result


def section(r: dict) -> list[str]:
    """The Markdown section: the sides, the ratios against their targets."""
    held_out = {r["eval_images"], r["stock_eval"], r["split"]["eval"]}
    stock_ratio = r["project_s"] / r["stock_s"]
    recipe_ratio = (r["ingest_s"] + r["project_s"]) / r["recipe_s"]
    lines = ["# Comparisons: stock TFX and a plain Keras recipe", "", f"Machine: {machine()}",
             "", f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, in "
             f"{r['took']:.0f} s; load average (1, 5, 15 min) {r['load_before']} before the runs "
             f"and {r['load_after']} after (other work shares the machine).", "",
             f"{3 * PER_CLASS:,} photo-like images (3 shape classes, 40-300 px, JPEG and PNG), "
             f"{r['split']['train']:,} train and {r['split']['eval']:,} held out by ingest's "
             f"content-hash split; every side scored on the same held-out images "
             f"({' = '.join(str(n) for n in sorted(held_out))}"
             f"{'' if len(held_out) == 1 else ': COUNTS DIFFER'}). 64x64x3 on every side; one "
             "run of each, back to back, each a fresh process (imports included).", "",
             "| side | wall s | held-out accuracy |", "|---|---:|---:|",
             f"| `python -m ops.ingest` (folder -> records) | {r['ingest_s']:.1f} | - |",
             f"| stock TFX pipeline (`bench/stock_tfx`, 750 steps of 32) | {r['stock_s']:.1f} | "
             f"{r['stock_accuracy']:.3f} |",
             f"| project: `python -m pipeline.local_runner` | {r['project_s']:.1f} | "
             f"{r['project_accuracy']:.3f} |",
             f"| Keras recipe (`bench/stock_tfx/keras_recipe.py`, 10 epochs) | "
             f"{r['recipe_s']:.1f} | {r['recipe_accuracy']:.3f} |", "",
             "| comparison | wall-time ratio | accuracy (project vs stock) | verdict |",
             "|---|---:|---|---|",
             f"| project run / stock TFX run | {stock_ratio:.2f}x | {r['project_accuracy']:.3f} vs "
             f"{r['stock_accuracy']:.3f} | time {target(stock_ratio, SPEED_STOCK, False, 'x')}; "
             f"accuracy {target(r['project_accuracy'], round(r['stock_accuracy'], 3), True)} |",
             f"| ingest + project run / Keras recipe | {recipe_ratio:.2f}x | "
             f"{r['project_accuracy']:.3f} vs {r['recipe_accuracy']:.3f} | time "
             f"{target(recipe_ratio, SPEED_RECIPE, False, 'x')}; accuracy "
             f"{target(r['project_accuracy'], ACCURACY, True)} |"]
    return lines + components(r)


def components(r: dict) -> list[str]:
    """Where each pipeline's time goes: its components (MLMD), and the rest of the wall
    time (interpreter, imports, pipeline construction, orchestration)."""
    stock, project = r["stock_components"], r["project_components"]
    lines = ["", "| component | stock TFX s | project s |", "|---|---:|---:|"]
    for name in list(stock) + [n for n in project if n not in stock]:
        lines.append(f"| {name} | " + " | ".join(
            f"{side[name]:.1f}" if name in side else "-" for side in (stock, project)) + " |")
    return lines + [f"| rest of the wall time (start-up, imports, orchestration) | "
                    f"{r['stock_s'] - sum(stock.values()):.1f} | "
                    f"{r['project_s'] - sum(project.values()):.1f} |"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results-compare.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-compare-", ignore_cleanup_errors=True) as work:
        write_results(args.out, section(measure(work)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
