"""Canary releases and instant rollback by version labels: ``python -m ops.labels <action>``.

- ``show``: which version is ``stable`` and ``canary``, with the canary's traffic weight.
- ``canary --version N --weight W``: send a share ``W`` of the traffic to version ``N``.
- ``compare``: per-version accuracy from clients' feedback, with a two-proportion z-test.
- ``promote``: the canary becomes stable (``--require-evidence``: only on a significant,
  non-negative accuracy difference with enough feedback).
- ``rollback``: all traffic back to stable at once (``--to-version N``: stable is ``N``).

Labels live in ``<push dir>/labels.json`` (the gateway routes by it) and TF Serving's
``<push dir>/models.config`` (``version_labels``); version directories are never touched.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from components import serving_dir
from components.serving_dir import Labels
from pipeline.config import PipelineConfig
from serving.feedback import FEEDBACK, compare, read_feedback


def current(push_dir: str) -> Labels:
    """The labels in use; before the first label, the served (highest) version is stable."""
    labels = serving_dir.read_labels(push_dir)
    if labels:
        return labels
    served = serving_dir.served_version(push_dir)
    if not served:
        raise ValueError(f"no version in {push_dir} to label")
    return Labels(stable=served)


def comparison(push_dir: str, feedback_dir: str):
    labels = current(push_dir)
    if not labels.canary:
        raise ValueError("no canary to compare: python -m ops.labels canary --version N")
    return compare(read_feedback(feedback_dir), labels.stable, labels.canary)


def apply(args) -> str:
    """Does ``args.action``; returns what to print. ValueError for a request that cannot be
    done (unknown version, no canary); PermissionError when the evidence refuses a promotion."""
    labels, reason = current(args.push_dir), getattr(args, "reason", "")
    if args.action == "show":
        return json.dumps(dict(dataclasses.asdict(labels), in_use=bool(
            serving_dir.read_labels(args.push_dir)), versions=serving_dir.versions(
                args.push_dir)))
    if args.action == "compare":
        result = comparison(args.push_dir, args.feedback_dir)
        rows = [f"{'label':8} {'version':>7} {'answers':>8} {'correct':>8} {'accuracy':>9}"]
        rows += [f"{name:8} {arm.version:>7} {arm.total:>8} {arm.correct:>8} "
                 f"{arm.accuracy:>9.3f}" for name, arm in (("stable", result.stable),
                                                            ("canary", result.canary))]
        why = result.verdict(args.alpha, args.min_samples)
        rows.append(f"difference {result.difference:+.3f}, z={result.z:.2f}, "
                    f"p={result.p_value:.3g}: " + (why or "canary may be promoted"))
        return "\n".join(rows)
    if args.action == "canary":
        stable = labels.stable
        if stable == args.version and not serving_dir.read_labels(args.push_dir):
            # Labels start now, with the newest version as the canary: stable is the one before.
            stable = max((v for v in serving_dir.versions(args.push_dir) if v < stable),
                         default=stable)
        new = Labels(stable, args.version, args.weight)
    elif args.action == "promote":
        if not labels.canary:
            raise ValueError("no canary to promote")
        if args.require_evidence:
            why = comparison(args.push_dir, args.feedback_dir).verdict(args.alpha,
                                                                       args.min_samples)
            if why:
                raise PermissionError(f"promotion refused: {why}")
        new = Labels(labels.canary)
    else:  # rollback
        new = Labels(args.to_version or labels.stable)
    serving_dir.set_labels(args.push_dir, new, args.action, reason)
    return (f"stable: version {new.stable}" + (f", canary: version {new.canary} at "
                                               f"{new.canary_weight:.0%}" if new.canary else ""))


def main(argv: list[str] | None = None) -> int:
    defaults = PipelineConfig.from_args([])
    parser = argparse.ArgumentParser(prog="python -m ops.labels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--push-dir", default=defaults.push_dir,
                        help="TF Serving model base directory (default: %(default)s)")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("show", help="the labels and versions")
    canary = actions.add_parser("canary", help="send a share of the traffic to a version")
    canary.add_argument("--version", type=int, required=True)
    canary.add_argument("--weight", type=float, required=True, help="its share, in [0, 1]")
    evidence = argparse.ArgumentParser(add_help=False)
    evidence.add_argument("--feedback-dir", default="",
                          help="the gateways' feedback logs (default: <push dir>/feedback)")
    evidence.add_argument("--alpha", type=float, default=0.05, help="significance level")
    evidence.add_argument("--min-samples", type=int, default=100,
                          help="answers with feedback needed per version")
    actions.add_parser("compare", parents=[evidence], help="canary vs stable accuracy")
    promote = actions.add_parser("promote", parents=[evidence], help="canary becomes stable")
    promote.add_argument("--require-evidence", action="store_true",
                         help="only on a significant, non-negative accuracy difference")
    rollback = actions.add_parser("rollback", help="all traffic to stable (or --to-version)")
    rollback.add_argument("--to-version", type=int, default=0)
    for action in (canary, promote, rollback):
        action.add_argument("--reason", default="", help="recorded in the labels' history")
    args = parser.parse_args(argv)
    args.feedback_dir = getattr(args, "feedback_dir", "") or os.path.join(args.push_dir,
                                                                           FEEDBACK)
    try:
        print(apply(args))
    except ValueError as err:
        print(f"labels: {err}", file=sys.stderr)
        return 2
    except PermissionError as err:
        print(f"labels: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
