"""Scheduled retraining on Kubeflow Pipelines: upload the compiled pipeline, set its schedule.

``python -m ops.schedule --host https://kfp.example.com --cron "0 2 * * *" [pipeline
options]`` compiles the pipeline (as ``pipeline.kubeflow_runner`` does) unless ``--package``
names a compiled one, uploads it as a new version of the pipeline, named by its content (an
identical package reuses its version; creating the pipeline also makes KFP's initial version,
named after the pipeline), and creates the recurring run, or
replaces it when its version, cron or parameters changed: max concurrency 1, no catch-up.
Re-running it never duplicates anything. ``--param NAME=VALUE`` (repeatable) sets a run-time
parameter of the package (``span``, ``train_steps``, ``epochs``, ``learning_rate``,
``batch_size``, ``min_accuracy``) for its runs; ``--run-now`` also starts one run at once
(CI does, on every commit to main). ``--pipeline-root`` is given to every run and recurring
run it creates: the open-source KFP backend ignores the package's ``defaultPipelineRoot`` and
uses the run's, else the cluster's default (``minio://mlpipeline/v2/artifacts``).
``--dry-run`` prints the requests instead of sending them. Versions and recurring runs are
looked up by name (the API's filter), following every page of the answer.
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


def run_time_parameters(package: str) -> dict[str, dict]:
    """The package's root input parameters: ``{name: {"parameterType", "defaultValue"}}``."""
    import yaml
    with open(package, encoding="utf-8") as f:
        spec = next(yaml.safe_load_all(f))
    return spec["root"].get("inputDefinitions", {}).get("parameters", {})


def parse_params(assignments: list[str], package: str) -> dict[str, Any]:
    """``["train_steps=800", ...]`` -> typed values; ``ValueError`` names a bad assignment."""
    declared = run_time_parameters(package)
    kinds = {"NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "STRING": str}
    values = {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        if not sep or name not in declared:
            raise ValueError(f"--param {assignment!r}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(sorted(declared))}")
        try:
            values[name] = kinds[declared[name]["parameterType"]](text)
        except ValueError:
            raise ValueError(f"--param {assignment!r}: {name} takes a "
                             f"{declared[name]['parameterType'].lower()}") from None
    return values


PAGE_SIZE = 100


def name_filter(name: str) -> str:
    """The KFP API's filter for ``display_name == name``."""
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name",
                                       "stringValue": name}]})


def find_by_name(list_page, field: str, name: str):
    """The item named ``name`` from a KFP list call (``list_page(page_token=...)``), or None:
    asks with the name filter, and follows ``next_page_token`` to the last page (a server that
    ignores the filter still answers, page by page)."""
    token = ""
    while True:
        page = list_page(page_token=token, page_size=PAGE_SIZE, filter=name_filter(name))
        found = next((i for i in getattr(page, field) or [] if i.display_name == name), None)
        if found is not None or not page.next_page_token:
            return found
        token = page.next_page_token


def schedule(client, package: str, pipeline_name: str, experiment: str, job_name: str,
             cron: str, params: dict[str, Any] | None = None, run_now: bool = False,
             pipeline_root: str = "") -> dict[str, Any]:
    """Idempotently uploads ``package`` and points the recurring run ``job_name`` at it, with
    run-time ``params`` and ``pipeline_root`` (empty: the cluster's default); with
    ``run_now``, also starts one run of that version."""
    params = params or {}
    version = version_name(pipeline_name, package)
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(package, pipeline_name=pipeline_name).pipeline_id
    existing = find_by_name(lambda **page: client.list_pipeline_versions(pipeline_id, **page),
                            "pipeline_versions", version)
    version_id = (existing.pipeline_version_id if existing else client.upload_pipeline_version(
        package, version, pipeline_id=pipeline_id).pipeline_version_id)
    experiment_id = client.create_experiment(experiment).experiment_id
    current = find_by_name(
        lambda **page: client.list_recurring_runs(experiment_id=experiment_id, **page),
        "recurring_runs", job_name)
    result = {"pipeline_id": pipeline_id, "version_id": version_id}
    root = pipeline_root or None
    if run_now:
        result["run_id"] = client.run_pipeline(
            experiment_id, f"{version}-run", pipeline_id=pipeline_id, version_id=version_id,
            params=params, pipeline_root=root).run_id
    config = current.runtime_config if current is not None else None
    if (current is not None and current.pipeline_version_reference.pipeline_version_id
            == version_id and current.trigger.cron_schedule.cron == cron
            and ((config and config.parameters) or {}) == params
            and ((config and config.pipeline_root) or "") == pipeline_root):
        return dict(result, action="unchanged", recurring_run_id=current.recurring_run_id)
    if current is not None:
        client.delete_recurring_run(current.recurring_run_id)
    run = client.create_recurring_run(
        experiment_id, job_name, cron_expression=cron, max_concurrency=1, no_catchup=True,
        pipeline_id=pipeline_id, version_id=version_id, enabled=True, params=params,
        pipeline_root=root)
    return dict(result, action="replaced" if current else "created",
                recurring_run_id=run.recurring_run_id)


def plan(package: str, pipeline_name: str, experiment: str, job_name: str,
         cron: str, params: dict[str, Any] | None = None, run_now: bool = False,
         pipeline_root: str = "") -> list[dict]:
    """The requests ``schedule`` sends, for ``--dry-run``."""
    version = version_name(pipeline_name, package)
    root = pipeline_root or "(the cluster's default)"
    now = [{"call": "run_pipeline", "job_name": f"{version}-run", "params": params or {},
            "pipeline_root": root}]
    return [
        {"call": "get_pipeline_id", "name": pipeline_name},
        {"call": "upload_pipeline", "if": "no pipeline of that name",
         "pipeline_package_path": package, "pipeline_name": pipeline_name},
        {"call": "list_pipeline_versions", "filter": f"display_name = {version}",
         "note": "every page"},
        {"call": "upload_pipeline_version", "if": f"no version named {version}",
         "pipeline_package_path": package, "pipeline_version_name": version},
        {"call": "create_experiment", "name": experiment, "note": "returns it if it exists"},
        {"call": "list_recurring_runs", "filter": f"display_name = {job_name}",
         "note": "every page"},
    ] + (now if run_now else []) + [
        {"call": "delete_recurring_run", "if": f"'{job_name}' exists with another version, "
                                               "cron, parameters or pipeline root"},
        {"call": "create_recurring_run", "if": f"'{job_name}' is absent or was deleted",
         "job_name": job_name, "cron_expression": cron, "max_concurrency": 1,
         "no_catchup": True, "enabled": True, "params": params or {}, "pipeline_root": root},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.schedule", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("KFP_HOST", ""),
                        help="KFP API endpoint (default: $KFP_HOST; a bearer token, if the "
                             "endpoint needs one, in $KFP_TOKEN)")
    parser.add_argument("--cron", default="0 2 * * *", help="5- or 6-field cron (UTC)")
    parser.add_argument("--experiment", default="retraining")
    parser.add_argument("--job-name", default="")
    parser.add_argument("--package", default="", help="a compiled package (else compiled now)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a run-time parameter of the runs (repeatable)")
    parser.add_argument("--run-now", action="store_true", help="also start one run now")
    parser.add_argument("--pipeline-root", default="",
                        help="the runs' pipeline root (also compiled in as the package's "
                             "default, which the open-source KFP backend ignores); default: "
                             "the cluster's (minio://mlpipeline/v2/artifacts on open-source KFP)")
    parser.add_argument("--dry-run", action="store_true")
    args, rest = parser.parse_known_args(argv)
    config = PipelineConfig.from_args(
        rest + (["--pipeline-root", args.pipeline_root] if args.pipeline_root else []),
        prog="python -m ops.schedule")
    if not args.host and not args.dry_run:
        parser.error("--host (or KFP_HOST) is required unless --dry-run")
    package = args.package
    if not package:
        from pipeline.kubeflow_runner import compile_pipeline
        package = compile_pipeline(config, config.package_path)
    job_name = args.job_name or f"{config.pipeline_name}-retraining"
    try:
        params = parse_params(args.param, package)
    except ValueError as err:
        parser.error(str(err))
    request = dict(package=package, pipeline_name=config.pipeline_name,
                   experiment=args.experiment, job_name=job_name, cron=kfp_cron(args.cron),
                   params=params, run_now=args.run_now, pipeline_root=args.pipeline_root)
    if args.dry_run:
        print(json.dumps(plan(**request), indent=1))
        return 0
    import warnings

    import kfp
    with warnings.catch_warnings():  # "This client only works with KFP v2.0.0-beta.2 and later"
        warnings.filterwarnings("ignore", category=FutureWarning, module="kfp")
        client = kfp.Client(host=args.host, existing_token=os.environ.get("KFP_TOKEN") or None)
    result = schedule(client, **request)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
