"""The retraining promise under concurrency: longer soaks of the serving registry's seams
(``tools/soak.py``: gated pushes, label commands and rollbacks as real processes, SIGKILLs at
random moments, two gateway processes taking traffic and each other's feedback), several
seeds; writes the counts and the invariants' violations.

``python bench/bench_seams.py --out bench/results-seams.md [--seconds 60 --seeds 3]``
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from domain import registry  # noqa: E402
from domain.labels import Labels, set_labels
from tools import soak  # noqa: E402

KEY = "bench-seams-" + "k" * 20


def one_soak(tmp: str, seconds: float, parallel: int, seed: int) -> dict:
    """A serving dir with a labelled tiny model, two gateways on it, and the soak."""
    with open(os.path.join(tmp, "jwt"), "w") as f:
        f.write(KEY)
    model = soak.tiny_model(os.path.join(tmp, "model"), ["a", "b", "c"], pad_megabytes=8)
    base = os.path.join(tmp, "serving", "image_classifier")
    for _ in (1, 2):
        registry.publish(model, base, {"action": "push"}, keep=3)
    set_labels(base, Labels(1, 2, 0.5), "canary")
    feedback = os.path.join(tmp, "feedback")
    gateways = [soak.start_gateway(os.path.dirname(base), feedback, os.path.join(tmp, "jwt"))
                for _ in range(2)]
    try:
        return soak.soak(base, model, seconds, parallel, kill_rate=1.0, seed=seed,
                         gateways=tuple(url for _, url in gateways), jwt_key=KEY,
                         feedback_dir=feedback)
    finally:
        for process, _ in gateways:
            process.kill()
            process.wait()


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
            rows.append(one_soak(tmp, args.seconds, args.parallel, seed))
        print(seed, rows[-1], flush=True)
    from bench_model import machine
    lines = ["# Seams benchmark", "", f"Machine: {machine()}", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "## Concurrent pushes, label commands, rollbacks, kills and two gateways",
             "", f"{args.seeds} soaks of {args.seconds:g} s, {args.parallel} processes at a "
             "time (tools/soak.py), two gateway processes answering 4 clients who grade each "
             "answer through the other gateway; then the repair the next command does, "
             "registry.check's invariants and the feedback log.", "",
             "| seed | processes | kills | pushes done | pushes refused (served changed) | "
             "label changes | requests (non-200) | feedback logged | violations |",
             "|---|---|---|---|---|---|---|---|---|"]
    for seed, r in enumerate(rows):
        o, q = r["outcomes"], r["requests"]
        failed = sum(v for k, v in q.items() if not k.endswith(" 200"))
        lines.append(f"| {seed} | {r['processes']} | {r['kills']} | {o.get('push: done', 0)} "
                     f"| {o.get('push: refused', 0)} | {r['label changes']} | "
                     f"{sum(q.values())} ({failed}) | {q.get('feedback 200', 0)} | "
                     f"{len(r['violations'])} |")
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n\n")
    return 1 if any(r["violations"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
