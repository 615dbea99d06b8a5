"""Canary releases and instant rollback by version labels: ``python -m ops.labels <action>``.

- ``show``: which version is ``stable`` and ``canary``, with the canary's traffic weight.
- ``canary --version N --weight W``: send a share ``W`` of the traffic to version ``N``.
- ``compare``: per-version accuracy from clients' feedback since the canary took effect, with
  a fixed-horizon non-inferiority test (``serving.feedback.compare``).
- ``promote``: the canary becomes stable (``--require-evidence``: only once the planned
  feedback shows it is not worse than stable by more than ``--margin``).
- ``rollback``: all traffic back to stable at once (``--to-version N``: stable is ``N``).
- ``settle``: finish a label change that waited for TF Serving to load its version.

Labels live in ``<push dir>/labels.json`` (the gateway routes by it) and TF Serving's
``<push dir>/models.config`` (``version_labels``); version directories are never touched.
Each change reads, decides and writes under the serving dir's lock (a compare-and-set: a
promotion decided on state a rollback has since changed cannot overwrite it), in two phases
as TF Serving requires: ``models.config`` first asks it to load the new versions while the
labels keep answering from the old ones; once it reports them AVAILABLE (``--tf-serving``)
the labels move.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from domain import registry
from domain.labels import (Labels, change_labels, labels_since, read_labels, read_pending,
                           settle_labels)
from pipeline.config import PipelineConfig
from serving.backends import tf_serving_versions
from serving.feedback import FEEDBACK, compare, read_feedback


def current(push_dir: str, labels: Labels | None = None) -> Labels:
    """The labels in use (``labels``, else read); before the first label, the served
    (highest) version is stable."""
    labels = labels or read_labels(push_dir)
    if labels:
        return labels
    served = registry.served_version(push_dir)
    if not served:
        raise ValueError(f"no version in {push_dir} to label")
    return Labels(stable=served)


def comparison(args, labels: Labels | None = None):
    """The non-inferiority test of the canary in effect, on the feedback given since it
    took effect (``serving.feedback.compare``)."""
    labels = current(args.push_dir, labels)
    if not labels.canary:
        raise ValueError("no canary to compare: python -m ops.labels canary --version N")
    return compare(read_feedback(args.feedback_dir), labels.stable, labels.canary,
                   since=labels_since(args.push_dir), margin=args.margin,
                   sample_size=args.min_samples, max_per_subject=args.max_per_subject)


def settle(args) -> str:
    """Phase two of a label change: waits (``--wait`` seconds) until TF Serving reports the
    pending versions AVAILABLE, then moves the labels; without ``--tf-serving`` (the gateway
    loads versions itself) at once."""
    def available(wanted: list[int]) -> bool:
        return not args.tf_serving or set(wanted) <= set(tf_serving_versions(
            args.tf_serving, os.path.basename(args.push_dir), timeout=5.0))

    deadline = time.monotonic() + args.wait
    while True:
        pending = read_pending(args.push_dir)
        labels = settle_labels(args.push_dir, available)
        if not pending or read_pending(args.push_dir) is None:
            return _describe(labels or current(args.push_dir))
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"TF Serving has not loaded version(s) {sorted(pending[0].versions.values())} "
                f"after {args.wait:g} s: the labels still point to the versions that answer; "
                f"models.config asks it to load them; finish with: python -m ops.labels "
                f"--push-dir {args.push_dir} --tf-serving {args.tf_serving} settle")
        time.sleep(0.5)


def _describe(labels: Labels) -> str:
    return (f"stable: version {labels.stable}" + (
        f", canary: version {labels.canary} at {labels.canary_weight:.0%}"
        if labels.canary else ""))


def apply(args) -> str:
    """Does ``args.action``; returns what to print. ValueError for a request that cannot be
    done (unknown version, no canary); PermissionError when the evidence refuses a promotion;
    TimeoutError when TF Serving did not load a newly labelled version in time."""
    if args.action == "show":
        pending = read_pending(args.push_dir)
        return json.dumps(dict(dataclasses.asdict(current(args.push_dir)), in_use=bool(
            read_labels(args.push_dir)), versions=registry.versions(
                args.push_dir), pending=dataclasses.asdict(pending[0]) if pending else None))
    if args.action == "compare":
        result = comparison(args)
        rows = [f"{'label':8} {'version':>7} {'answers':>8} {'correct':>8} {'accuracy':>9}"]
        rows += [f"{name:8} {arm.version:>7} {arm.total:>8} {arm.correct:>8} "
                 f"{arm.accuracy:>9.3f}" for name, arm in (("stable", result.stable),
                                                            ("canary", result.canary))]
        why = result.verdict(args.alpha)
        rows.append(f"difference {result.difference:+.3f}, margin {result.margin:.3f}, "
                    f"z={result.z:.2f}, p={result.p_value:.3g}: "
                    + (why or "canary may be promoted"))
        return "\n".join(rows)
    if args.action == "settle":
        return settle(args)
    with registry.locked(args.push_dir):  # read, decide and write: a compare-and-set
        change_labels(args.push_dir, lambda labels: decide(args, labels),
                                  args.action, getattr(args, "reason", ""))
        if not args.tf_serving:  # the gateways load versions themselves: one step
            return settle(args)
    return settle(args)  # waits for TF Serving without holding the lock


def decide(args, latest: Labels | None) -> Labels:
    """The labels ``args.action`` asks for, from the latest labels decided (None: none yet)."""
    labels = current(args.push_dir, latest)
    if args.action == "canary":
        stable = labels.stable
        if stable == args.version and latest is None:
            # Labels start now, with the newest version as the canary: stable is the one before.
            stable = max((v for v in registry.versions(args.push_dir) if v < stable),
                         default=stable)
        return Labels(stable, args.version, args.weight)
    if args.action == "promote":
        if not labels.canary:
            raise ValueError("no canary to promote")
        if args.require_evidence:
            why = comparison(args, labels).verdict(args.alpha)
            if why:
                raise PermissionError(f"promotion refused: {why}")
        return Labels(labels.canary)
    return Labels(args.to_version or labels.stable)  # rollback


def main(argv: list[str] | None = None) -> int:
    defaults = PipelineConfig.from_args([])
    parser = argparse.ArgumentParser(prog="python -m ops.labels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--push-dir", default=defaults.push_dir,
                        help="TF Serving model base directory (default: %(default)s)")
    parser.add_argument("--tf-serving", default="",
                        help="TF Serving's REST address (http://tf-serving:8501): a label moves "
                             "only once it reports the version AVAILABLE (default: the gateway "
                             "loads versions itself, labels move at once)")
    parser.add_argument("--wait", type=float, default=120.0,
                        help="seconds to wait for TF Serving to load a version")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("show", help="the labels and versions")
    canary = actions.add_parser("canary", help="send a share of the traffic to a version")
    canary.add_argument("--version", type=int, required=True)
    canary.add_argument("--weight", type=float, required=True, help="its share, in [0, 1]")
    evidence = argparse.ArgumentParser(add_help=False)
    evidence.add_argument("--feedback-dir", default="",
                          help="the gateways' feedback log (default: <push dir>/feedback)")
    evidence.add_argument("--alpha", type=float, default=0.05,
                          help="the test's error rate: promoting a canary worse by the margin")
    evidence.add_argument("--margin", type=float, default=0.02,
                          help="the accuracy a canary may lose and still be promoted")
    evidence.add_argument("--min-samples", type=int, default=100,
                          help="the planned answers with feedback per version (fixed horizon: "
                               "the test uses the first ones since the canary took effect)")
    evidence.add_argument("--max-per-subject", type=int, default=20,
                          help="answers one feedback token's subject may count per version")
    actions.add_parser("compare", parents=[evidence], help="canary vs stable accuracy")
    promote = actions.add_parser("promote", parents=[evidence], help="canary becomes stable")
    promote.add_argument("--require-evidence", action="store_true",
                         help="only if the canary is shown not worse than stable by the margin")
    rollback = actions.add_parser("rollback", help="all traffic to stable (or --to-version)")
    rollback.add_argument("--to-version", type=int, default=0)
    actions.add_parser("settle", help="finish a label change once TF Serving loaded the version")
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
    except (PermissionError, TimeoutError) as err:
        print(f"labels: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
