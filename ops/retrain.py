"""One scheduled retraining cycle, for cron or a systemd timer.

``python -m ops.retrain --spans true --data-root /data/photos ...`` (same options as
``pipeline.local_runner``) runs the pipeline once on the latest span and exits with:

* 0 ``pushed``: a new model was blessed and published as the next version;
* 0 ``superseded``: the model was blessed against a version that is no longer served (another
  run pushed, or an operator rolled back or moved the labels meanwhile): nothing pushed; the
  next run gates against the version served now;
* 0 ``unchanged``: nothing new (no new data: served from cache, whatever the earlier verdict,
  or a warm-started retrain on the served version's data and settings; or the blessed model
  is already published);
* 2 ``not_blessed``: the new model failed the gate; the served version is untouched;
* 1 ``failed``: the run failed (bad data, an error); the served version is untouched.
"""
from __future__ import annotations

import sys
import traceback

from domain.contracts import NO_NEW_DATA, RunOutcome
from domain.registry import SERVED_CHANGED
from pipeline.config import PipelineConfig
from pipeline.local_runner import describe, run
from pipeline.preflight import is_user_error
from pipeline.progress import readable_run

EXIT_CODES = {"pushed": 0, "superseded": 0, "unchanged": 0, "not_blessed": 2, "failed": 1}


def status(outcome: RunOutcome) -> str:
    if outcome.pushed:
        return "pushed"
    if outcome.reason.startswith(SERVED_CHANGED):
        return "superseded"
    unchanged = outcome.blessed or outcome.cached or outcome.reason.startswith(
        NO_NEW_DATA)
    return "unchanged" if unchanged else "not_blessed"


def main(argv: list[str] | None = None) -> int:
    config = PipelineConfig.from_args(argv)
    try:
        with readable_run(config):
            outcome = run(config)
    except Exception as err:  # noqa: BLE001 - any failure is reported as such to the scheduler
        if is_user_error(err):
            print(f"error: {err}", file=sys.stderr)
        else:
            traceback.print_exc()
        print("RETRAIN STATUS: failed")
        return EXIT_CODES["failed"]
    result = status(outcome)
    print(describe(outcome, config))
    print(f"RETRAIN STATUS: {result}")
    return EXIT_CODES[result]


if __name__ == "__main__":
    sys.exit(main())
