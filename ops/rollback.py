"""Serve an earlier version again: ``python -m ops.rollback --to-version N --reason ...``.

Without version labels TF Serving serves the highest version, so the chosen version is
re-published, atomically, as a new highest version; the manifest records the rollback and its
reason. With labels in use it refuses: ``python -m ops.labels rollback`` moves ``stable``.
"""
from __future__ import annotations

import argparse
import os
import sys

from domain import registry
from pipeline.config import PipelineConfig


def main(argv: list[str] | None = None) -> int:
    defaults = PipelineConfig.from_args([])
    parser = argparse.ArgumentParser(prog="python -m ops.rollback", description=__doc__)
    parser.add_argument("--push-dir", default=defaults.push_dir,
                        help="TF Serving model base directory (default: %(default)s)")
    parser.add_argument("--to-version", type=int, required=True)
    parser.add_argument("--reason", required=True, help="recorded in the manifest")
    parser.add_argument("--keep-versions", type=int, default=defaults.keep_versions)
    args = parser.parse_args(argv)
    try:
        version = registry.rollback(args.push_dir, args.to_version, args.reason,
                                       args.keep_versions)
    except (FileNotFoundError, ValueError) as err:
        print(f"rollback: {err}", file=sys.stderr)
        return 2
    print(f"Version {args.to_version} re-published as version {version}, now served: "
          f"{os.path.join(args.push_dir, str(version))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
