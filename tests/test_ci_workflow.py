"""The GitHub Actions workflow: tests on every push; on main, image -> compile -> upload -> run."""
from __future__ import annotations

import json
import os
import re
import shlex

import yaml

from ops import schedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = os.path.join(ROOT, ".github", "workflows", "ci.yml")
# The compile options of the workflow's KFP_COMPILE_ARGS example: the model's input is given (the
# compiler cannot read the cluster's volume).
SHAPE = "--spans true --image-height 64 --image-width 64 --image-channels 3 --num-classes 10"


def _workflow() -> dict:
    with open(WORKFLOW, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _runs(job: dict) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def test_every_push_runs_the_test_suite():
    workflow = _workflow()
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert "push" in triggers and "pull_request" in triggers
    assert _runs(workflow["jobs"]["test"]) == ["make test"]
    assert workflow["jobs"]["test"]["timeout-minutes"] <= 90


def test_main_builds_compiles_uploads_and_runs_after_the_tests():
    deploy = _workflow()["jobs"]["deploy"]
    assert deploy["needs"] == "test"
    assert "refs/heads/main" in deploy["if"] and "push" in deploy["if"]
    runs = " && ".join(_runs(deploy))
    order = [runs.index(step) for step in ("make image", "docker push", "make compile",
                                           "ops.schedule")]
    assert order == sorted(order)
    assert "--run-now" in runs and "${{ secrets.KFP_HOST }}" == deploy["env"]["KFP_HOST"]
    makefile = open(os.path.join(ROOT, "Makefile"), encoding="utf-8").read()
    for target in re.findall(r"make (\w+)", runs):
        assert re.search(rf"^{target}:", makefile, re.M), target


def test_the_deploy_command_is_one_the_schedule_command_accepts(tmp_path, capsys):
    """The workflow's schedule step, with a package compiled here, as a dry run."""
    from pipeline.config import PipelineConfig
    from pipeline.kubeflow_runner import compile_pipeline

    step = next(r for r in _runs(_workflow()["jobs"]["deploy"]) if "ops.schedule" in r)
    argv = shlex.split(step.replace("${{ vars.KFP_COMPILE_ARGS }}", SHAPE))
    argv = argv[argv.index("ops.schedule") + 1:]
    makefile = open(os.path.join(ROOT, "Makefile"), encoding="utf-8").read()
    cluster = re.search(r"^CLUSTER \?= ((?:.*\\\n)*.*)$", makefile, re.M).group(1)
    config = PipelineConfig.from_args(shlex.split(cluster.replace("\\\n", " ")) +
                                      shlex.split(SHAPE), {})
    package = compile_pipeline(config, str(tmp_path / "ci.yaml"))
    argv[argv.index("--package") + 1] = package
    assert schedule.main(argv + ["--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert "run_pipeline" in [step["call"] for step in plan]


def test_make_serve_runs_the_gateway_behind_its_edge_proxy():
    """Issue 33: ``make serve`` starts nginx in front (installed by ``make edge``); the
    gateway alone is ``make serve-app``, for development."""
    makefile = open(os.path.join(ROOT, "Makefile"), encoding="utf-8").read()
    serve = re.search(r"^serve:(.*)\n\t(.*)", makefile, re.M)
    assert "edge" in serve.group(1).split("##")[0].split()
    assert "-m serving.edge" in serve.group(2)
    assert re.search(r"^serve-app:.*\n\t.*-m serving --serving-dir", makefile, re.M)
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert "make serve-edge" not in readme and "make serve-app" in readme
