"""The retraining promise under concurrency: a longer soak of the serving registry's seams
(``tools/soak.py``: gated pushes, label commands and rollbacks as real processes, SIGKILLs at
random moments), several seeds; writes the counts and the invariants' violations.

``python bench/bench_seams.py --out bench/results-seams.md [--seconds 60]``
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from components import serving_dir  # noqa: E402
from tools import soak  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/results-seams.md")
    parser.add_argument("--seconds", type=float, default=60.0, help="per seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=6)
    args = parser.parse_args(argv)
    rows = []
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            model = soak.model_dir(os.path.join(tmp, "model"))
            base = os.path.join(tmp, "serving", "m")
            serving_dir.publish(model, base, {"action": "push"}, keep=3)
            result = soak.soak(base, model, args.seconds, args.parallel, kill_rate=1.0,
                               seed=seed)
        rows.append(result)
        print(seed, result, flush=True)
    lines = ["## Seams: concurrent pushes, label commands, rollbacks and kills", "",
             f"{args.seeds} soaks of {args.seconds:g} s, {args.parallel} processes at a time "
             "(tools/soak.py), then the repair the next command does and "
             "serving_dir.check's invariants.", "",
             "| seed | processes | kills | pushes done | pushes refused (served changed) | "
             "label changes | violations |", "|---|---|---|---|---|---|---|"]
    for seed, r in enumerate(rows):
        o = r["outcomes"]
        lines.append(f"| {seed} | {r['processes']} | {r['kills']} | {o.get('push: done', 0)} "
                     f"| {o.get('push: refused', 0)} | {r['label changes']} | "
                     f"{len(r['violations'])} |")
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n\n")
    return 1 if any(r["violations"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
