"""Stop rule benchmarks (``make bench``): the default model stopped at its plateau against the
whole step budget, on data like users' data.

(a) Shapes (``tools/make_shapes.py``: 3 classes, 600 images, 40-300 px, JPEG and PNG, RGB,
    grey and RGBA), ingested with ``ops.ingest`` and trained at 48x48x3, for ``SEEDS`` (each
    seed makes other images and trains with another seed).
(b) The embedded digits (1,797 8x8 images): the default run.
(c) Photo-like data: 5 shape classes, 800 images, trained at 64x64x3.

Each is a first run of the local runner from a fresh work dir with default training options,
then the same with ``--early-stop false`` (the whole budget). Reported per dataset and seed:
the Evaluator's eval accuracy of both and their difference, the steps run of the budget and
why training stopped, the Trainer's seconds (``run_fn``: input, fit, evaluate, export), its
time to accuracy (``trainer_summary.json``) and their ratio, and each target met or missed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]

from bench.bench_model import machine, write_results  # noqa: E402
from bench.bench_pipeline import durations, timed_run  # noqa: E402
from make_shapes import SHAPES, write_shapes  # noqa: E402
from domain.features import TRAINER_SUMMARY  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402
from ops.ingest import ingest  # noqa: E402
from pipeline.outcome import latest_outcome  # noqa: E402
from domain.mlmd_queries import latest_artifact, metadata_store  # noqa: E402

SEEDS = (42, 1, 2)
RATIO, POINTS = 1.3, 0.5  # targets: Trainer / time to accuracy, eval accuracy lost (points)
FULL = ("--early-stop", "false")


def shapes_flags(work: str, seed: int, classes: int = 3, per_class: int = 200,
                 side: int = 64) -> list[str]:
    ingest(write_shapes(os.path.join(work, "images"), per_class, classes, seed) and
           os.path.join(work, "images"), os.path.join(work, "data"), progress=False)
    return ["--image-height", str(side), "--image-width", str(side), "--image-channels", "3",
            "--num-classes", str(classes), "--class-names", " ".join(sorted(SHAPES[:classes])),
            "--data-root", os.path.join(work, "data"), "--seed", str(seed)]


def photo_flags(work: str, seed: int) -> list[str]:
    return shapes_flags(work, seed, classes=5, per_class=120)


def digits_flags(work: str, seed: int) -> list[str]:
    return ["--seed", str(seed)]  # the embedded digits


def first_run(make_flags, seed: int, extra: tuple[str, ...] = ()) -> dict:
    """A first run on fresh data in a fresh work dir: eval accuracy, seconds, the Trainer's
    summary."""
    work = tempfile.mkdtemp(prefix="bench-learning-")
    try:
        flags = make_flags(work, seed) + ["--work-dir", work, *extra]
        wall, _ = timed_run(flags)
        config = PipelineConfig.from_args(flags)
        run = latest_artifact(metadata_store(config.metadata_path), "ModelRun", "Trainer")
        with open(os.path.join(run.uri, TRAINER_SUMMARY)) as f:
            summary = json.load(f)
        return {"seed": seed, "accuracy": latest_outcome(config).accuracy, "wall": wall,
                "trainer": durations(work)["Trainer"], **summary}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def target(value: float, goal: float, higher_is_better: bool, unit: str = "") -> str:
    met = value >= goal if higher_is_better else value <= goal
    if met:
        return f"met ({value:.3g}{unit} {'>=' if higher_is_better else '<='} {goal:g}{unit})"
    return f"**missed** by {abs(value - goal):.3g}{unit} ({value:.3g}{unit} vs {goal:g}{unit})"


def trainer_s(run: dict) -> float:
    """The Trainer's ``run_fn`` seconds: input and compile, fit, evaluate, export."""
    return sum(run["seconds"].values())


def trainer_over_tta(run: dict) -> float:
    """The Trainer's seconds over its time to accuracy (inf when it never came near)."""
    reached = run["time_to_accuracy"]
    return trainer_s(run) / reached if reached else float("inf")


def lost_points(early: dict, full: dict) -> float:
    """Eval accuracy points the stop rule lost against the whole budget (negative: gained)."""
    return (full["accuracy"] - early["accuracy"]) * 100


def row(name: str, early: dict, full: dict) -> str:
    reached = early["time_to_accuracy"]
    return (f"| {name} | {early['seed']} | {early['accuracy']:.3f} | {full['accuracy']:.3f} | "
            f"{(early['accuracy'] - full['accuracy']) * 100:+.1f} | "
            f"{early['steps_run']} of {early['train_steps']}"
            f" ({early['stopped']}; {early['rounds_run']} rounds of "
            f"{early['rounds'][0][0]}) | {early['validation_percent']}% "
            f"({sum(early['class_counts']['validation'])}) | {trainer_s(early):.1f} | "
            f"{'-' if reached is None else round(reached, 1)} | {trainer_over_tta(early):.2f}x | "
            f"{early['rounds'][-1][1] / reached if reached else float('inf'):.2f}x | "
            f"{trainer_s(full):.1f} | {early['trainer']:.1f} |")


def section(runs: list[tuple[str, dict, dict]]) -> list[str]:
    """The Markdown section of ``(data, plateau run, whole-budget run)`` rows."""
    worst_ratio = max(trainer_over_tta(early) for _, early, _ in runs)
    worst_lost = max(lost_points(early, full) for _, early, full in runs)
    return ["# Stop rule: the plateau against the whole step budget", "",
            f"Machine: {machine()}", "",
            f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; first runs "
            "from a fresh work dir, default training options, then the same run with "
            "`--early-stop false` (the whole step budget). Time to accuracy: the Trainer's "
            "seconds until validation accuracy first came within 0.5 points of its final "
            "value; Trainer s: its `run_fn` (input and compile, fit, evaluate, export), the "
            "span time to accuracy is measured in; the component's wall time beside it. "
            "Last round: the seconds to the end of the last round (the stop rule's part, "
            "without evaluate and export). Points: eval accuracy against the whole "
            "budget's.", "",
            "| data | seed | eval accuracy | whole budget | points | steps run of budget "
            "(stop; rounds of steps) | validation part (images) | Trainer s | time to "
            "accuracy s | Trainer / time to accuracy | last round / time to accuracy | "
            "whole budget: Trainer s | Trainer component wall s |",
            "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"] + [
            row(name, early, full) for name, early, full in runs] + [
            "", f"- Trainer / time to accuracy <= {RATIO}x, worst of the {len(runs)} runs: "
            f"{target(worst_ratio, RATIO, False, 'x')}",
            f"- Eval accuracy within {POINTS} points of the whole budget, worst of the "
            f"{len(runs)}: {target(worst_lost, POINTS, False, ' points')}", ""]


def whole_budget_run(runs_file: str, name: str, seed: int) -> dict | None:
    """The whole-budget run of ``name`` and ``seed`` in a ``--runs`` file, if any (read when
    needed: an earlier bench may still be writing it)."""
    if not runs_file or not os.path.exists(runs_file):
        return None
    with open(runs_file) as f:
        return next((full for data, _, full in json.load(f)
                     if (data, full["seed"]) == (name, seed)), None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results-learning.md")
    parser.add_argument("--runs", default="", help="also write every run's numbers and "
                        "validation rounds to this JSON file (to replay stop rules on)")
    parser.add_argument("--whole-budget", default="", help="reuse the whole-budget runs of "
                        "this --runs file (the stop rule plays no part in them)")
    args = parser.parse_args(argv)
    datasets = [("shapes 64x64", shapes_flags, seed) for seed in SEEDS] + [
        ("embedded digits 8x8", digits_flags, SEEDS[0]),
        ("shapes, 5 classes, 64x64", photo_flags, SEEDS[0])]
    runs = []
    for name, flags, seed in datasets:  # the section so far after each (a long bench)
        early = first_run(flags, seed)
        runs.append((name, early, whole_budget_run(args.whole_budget, name, seed)
                     or first_run(flags, seed, FULL)))
        write_results(args.out, section(runs))
        if args.runs:
            with open(args.runs + ".part", "w") as f:
                json.dump(runs, f)
            os.replace(args.runs + ".part", args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
