"""Scheduled retraining on Kubeflow Pipelines: upload the compiled pipeline, set its schedule.

``python -m pipeline.schedule --host https://kfp.example.com --cron "0 2 * * *" [pipeline
options]`` compiles the pipeline (as ``pipeline.kubeflow_runner`` does) unless ``--package``
names a compiled one, uploads it as a new version of the pipeline, named by its content (an
identical package reuses its version; creating the pipeline also makes KFP's initial version,
named after the pipeline), and creates the recurring run, or
replaces it when its version or cron changed: max concurrency 1, no catch-up. Re-running it
never duplicates anything. ``--dry-run`` prints the requests instead of sending them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any

from pipeline.config import PipelineConfig


def kfp_cron(expression: str) -> str:
    """KFP's cron has a leading seconds field: ``0 2 * * *`` -> ``0 0 2 * * *``."""
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ValueError(f"cron expression needs 5 or 6 fields, got {expression!r}")
    return " ".join(["0"] + fields if len(fields) == 5 else fields)


def version_name(pipeline_name: str, package: str) -> str:
    """Content-addressed, so an unchanged package maps to the version already uploaded."""
    with open(package, "rb") as f:
        return f"{pipeline_name}-{hashlib.sha256(f.read()).hexdigest()[:12]}"


def _first(items, **match):
    return next((i for i in items or [] if all(getattr(i, k) == v for k, v in match.items())),
                None)


def schedule(client, package: str, pipeline_name: str, experiment: str, job_name: str,
             cron: str) -> dict[str, Any]:
    """Idempotently uploads ``package`` and points the recurring run ``job_name`` at it."""
    version = version_name(pipeline_name, package)
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(package, pipeline_name=pipeline_name).pipeline_id
    versions = client.list_pipeline_versions(pipeline_id, page_size=100).pipeline_versions
    existing = _first(versions, display_name=version)
    version_id = (existing.pipeline_version_id if existing else client.upload_pipeline_version(
        package, version, pipeline_id=pipeline_id).pipeline_version_id)
    experiment_id = client.create_experiment(experiment).experiment_id
    runs = client.list_recurring_runs(experiment_id=experiment_id, page_size=100).recurring_runs
    current = _first(runs, display_name=job_name)
    if (current is not None and current.pipeline_version_reference.pipeline_version_id
            == version_id and current.trigger.cron_schedule.cron == cron):
        return {"action": "unchanged", "recurring_run_id": current.recurring_run_id,
                "pipeline_id": pipeline_id, "version_id": version_id}
    if current is not None:
        client.delete_recurring_run(current.recurring_run_id)
    run = client.create_recurring_run(
        experiment_id, job_name, cron_expression=cron, max_concurrency=1, no_catchup=True,
        pipeline_id=pipeline_id, version_id=version_id, enabled=True)
    return {"action": "replaced" if current else "created",
            "recurring_run_id": run.recurring_run_id, "pipeline_id": pipeline_id,
            "version_id": version_id}


def plan(package: str, pipeline_name: str, experiment: str, job_name: str,
         cron: str) -> list[dict]:
    """The requests ``schedule`` sends, for ``--dry-run``."""
    version = version_name(pipeline_name, package)
    return [
        {"call": "get_pipeline_id", "name": pipeline_name},
        {"call": "upload_pipeline", "if": "no pipeline of that name",
         "pipeline_package_path": package, "pipeline_name": pipeline_name},
        {"call": "upload_pipeline_version", "if": f"no version named {version}",
         "pipeline_package_path": package, "pipeline_version_name": version},
        {"call": "create_experiment", "name": experiment, "note": "returns it if it exists"},
        {"call": "delete_recurring_run", "if": f"'{job_name}' exists with another version or "
                                               "cron"},
        {"call": "create_recurring_run", "if": f"'{job_name}' is absent or was deleted",
         "job_name": job_name, "cron_expression": cron, "max_concurrency": 1,
         "no_catchup": True, "enabled": True},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.schedule", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("KFP_HOST", ""),
                        help="KFP API endpoint (default: $KFP_HOST)")
    parser.add_argument("--cron", default="0 2 * * *", help="5- or 6-field cron (UTC)")
    parser.add_argument("--experiment", default="retraining")
    parser.add_argument("--job-name", default="")
    parser.add_argument("--package", default="", help="a compiled package (else compiled now)")
    parser.add_argument("--dry-run", action="store_true")
    args, rest = parser.parse_known_args(argv)
    config = PipelineConfig.from_args(rest, prog="python -m pipeline.schedule")
    package = args.package
    if not package:
        from pipeline.kubeflow_runner import compile_pipeline
        package = compile_pipeline(config, os.path.join(config.work_dir, "kfp",
                                                        f"{config.pipeline_name}.yaml"))
    job_name = args.job_name or f"{config.pipeline_name}-retraining"
    request = dict(package=package, pipeline_name=config.pipeline_name,
                   experiment=args.experiment, job_name=job_name, cron=kfp_cron(args.cron))
    if args.dry_run:
        print(json.dumps(plan(**request), indent=1))
        return 0
    if not args.host:
        parser.error("--host (or KFP_HOST) is required unless --dry-run")
    import kfp
    result = schedule(kfp.Client(host=args.host), **request)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
