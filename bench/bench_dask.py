"""The Beam components on a Dask cluster against the DirectRunner (``make bench``).

The default digits at 1x and 30x (1,797 and 53,910 images): one run on the in-process
DirectRunner and one on a loopback cluster of two single-thread worker processes
(``--beam-mode dask``), each in a new work dir; the Beam components' seconds from MLMD and the
whole run's wall time. On one machine the cluster adds scheduling and serialisation, and gains
at most its two workers' cores: this measures that overhead and how it shrinks with data, not
a speed-up a cluster of many machines would give.

``python bench/bench_dask.py --out bench/results-dask.md [--sizes 1,30]``
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_model import machine, write_results  # noqa: E402
from bench.bench_pipeline import durations, replicate, timed_run  # noqa: E402
from pipeline.default_data import ensure_digits_dataset  # noqa: E402
from tools.dask_cluster import loopback_cluster  # noqa: E402

BEAM_COMPONENTS = ("ImportExampleGen", "ImageValidator", "StatisticsGen", "Transform",
                   "Evaluator")
RUN_ARGS = ["--train-steps", "40", "--epochs", "2", "--min-accuracy", "0"]


def one_size(work: str, data: str, address: str) -> dict[str, tuple[float, dict]]:
    """``{runner: (wall seconds, seconds per component)}`` of one run on each runner."""
    runs = {}
    for runner, extra in (("direct", []),
                          ("dask", ["--beam-mode", "dask", "--dask-address", address])):
        target = os.path.join(work, runner)
        wall, _ = timed_run(["--work-dir", target, "--data-root", data] + RUN_ARGS + extra)
        runs[runner] = (wall, durations(target))
    return runs


def table(times: int, images: int, runs: dict) -> list[str]:
    lines = ["", f"## {times}x data ({images:,} images)", "",
             "| component | DirectRunner s | Dask (2 workers) s | Dask / Direct |",
             "|---|---:|---:|---:|"]
    for name in BEAM_COMPONENTS:
        a, b = runs["direct"][1][name], runs["dask"][1][name]
        lines.append(f"| {name} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    a, b = runs["direct"][0], runs["dask"][0]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return lines + [f"| whole run (wall) | {a:.1f} | {b:.1f} | {b / a:.2f}x |", "",
                    f"Load average (1, 5, 15 min) after these runs: {load} on "
                    f"{os.cpu_count()} cores."]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/results-dask.md")
    parser.add_argument("--sizes", default="1,30", help="data sizes, times the default digits")
    args = parser.parse_args(argv)
    lines = ["# Beam components: Dask cluster vs DirectRunner", "", machine()]
    work = tempfile.mkdtemp(prefix="bench-dask-")
    try:
        digits = os.path.join(work, "digits")
        ensure_digits_dataset(digits)
        with loopback_cluster() as address:
            for times in map(int, args.sizes.split(",")):
                data = os.path.join(work, f"data-{times}x")
                images = replicate(digits, data, times)
                lines += table(times, images, one_size(os.path.join(work, f"{times}x"), data,
                                                       address))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
