"""The schedule command: dry run, and a contract test of its KFP API calls on loopback."""
from __future__ import annotations

import json

import pytest

from ops import schedule
from tests.kfp_contract_server import KfpContractServer


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """Two compiled packages of the same pipeline differing in one option."""
    from pipeline.config import PipelineConfig
    from pipeline.kubeflow_runner import compile_pipeline
    root = tmp_path_factory.mktemp("packages")
    return [compile_pipeline(PipelineConfig(pipeline_root="gs://b/r", data_root="gs://b/d",
                                            pvc_name="data", serving_dir="/mnt/data/serving",
                                            train_steps=steps, image_height=8, image_width=8,
                                            image_channels=1, num_classes=10),
                             str(root / f"p{steps}.yaml"))
            for steps in (400, 800)]


def test_cron_gets_kfp_seconds_field():
    assert schedule.kfp_cron("0 2 * * *") == "0 0 2 * * *"
    assert schedule.kfp_cron("30 0 2 * * 1") == "30 0 2 * * 1"
    with pytest.raises(ValueError):
        schedule.kfp_cron("daily")


def test_dry_run_prints_the_requests_and_sends_none(packages, capsys):
    with KfpContractServer() as server:
        assert schedule.main(["--dry-run", "--host", server.url, "--package", packages[0],
                              "--cron", "0 3 * * *"]) == 0
        assert server.requests == []
    plan = json.loads(capsys.readouterr().out)
    assert [step["call"] for step in plan] == [
        "get_pipeline_id", "upload_pipeline", "list_pipeline_versions", "upload_pipeline_version",
        "create_experiment", "list_recurring_runs", "delete_recurring_run", "create_recurring_run"]
    assert plan[-1]["cron_expression"] == "0 0 3 * * *"
    assert plan[-1]["max_concurrency"] == 1 and plan[-1]["no_catchup"] is True


def _schedule(server, package, cron="0 2 * * *"):
    return schedule.main(["--host", server.url, "--package", package, "--cron", cron])


def test_schedule_is_idempotent_and_updates_in_place(packages, capsys):
    with KfpContractServer() as server:
        assert _schedule(server, packages[0]) == 0
        first = server.calls()
        assert "POST /apis/v2beta1/pipelines/upload" in first
        assert "POST /apis/v2beta1/recurringruns" in first
        [run] = server.recurring_runs.values()
        assert run["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *"
        assert int(run["max_concurrency"]) == 1 and run["no_catchup"] is True
        assert run["mode"] == "ENABLE" and run["display_name"] == "image-classifier-retraining"
        assert '"action": "created"' in capsys.readouterr().out

        server.requests.clear()
        assert _schedule(server, packages[0]) == 0  # same package, same cron: nothing changes
        assert not [c for c in server.calls() if c.startswith(("POST", "DELETE"))
                    and "experiments" not in c]
        assert len(server.recurring_runs) == 1 and len(server.pipelines) == 1
        assert '"action": "unchanged"' in capsys.readouterr().out

        assert _schedule(server, packages[1], cron="0 4 * * *") == 0  # a new version
        [pipeline_id] = server.pipelines
        # KFP names the version a new pipeline is created with after the pipeline; the
        # versions scheduled are named by content: one per distinct package.
        scheduled = [v for v in server.versions[pipeline_id]
                     if v["display_name"].startswith("image-classifier-")]
        assert len(scheduled) == 2
        [run] = server.recurring_runs.values()
        assert run["pipeline_version_reference"]["pipeline_version_id"] == \
            scheduled[1]["pipeline_version_id"]
        assert run["trigger"]["cron_schedule"]["cron"] == "0 0 4 * * *"
        assert '"action": "replaced"' in capsys.readouterr().out


def test_run_time_parameters_reach_the_recurring_run_and_a_run_now(packages, capsys):
    with KfpContractServer() as server:
        args = ["--host", server.url, "--package", packages[0], "--param", "train_steps=800",
                "--param", "learning_rate=0.001", "--param", "span=3"]
        assert schedule.main(args + ["--run-now"]) == 0
        [run] = server.recurring_runs.values()
        assert run["runtime_config"]["parameters"] == {
            "train_steps": 800, "learning_rate": 0.001, "span": 3}
        [now] = server.runs.values()
        assert now["runtime_config"]["parameters"] == run["runtime_config"]["parameters"]
        assert now["pipeline_version_reference"] == run["pipeline_version_reference"]
        capsys.readouterr()

        assert schedule.main(args) == 0  # same parameters: unchanged
        assert '"action": "unchanged"' in capsys.readouterr().out
        assert schedule.main(args[:-2]) == 0  # a parameter dropped: the run is replaced
        assert '"action": "replaced"' in capsys.readouterr().out
        [run] = server.recurring_runs.values()
        assert "span" not in run["runtime_config"]["parameters"]


def test_the_pipeline_root_reaches_every_run_it_creates(packages, capsys):
    with KfpContractServer() as server:
        args = ["--host", server.url, "--package", packages[0]]
        assert schedule.main(args) == 0  # no root: none sent, the cluster's default applies
        [run] = server.recurring_runs.values()
        assert "pipeline_root" not in (run.get("runtime_config") or {})
        root = ["--pipeline-root", "gs://bucket/tfx-root"]
        assert schedule.main(args + root + ["--run-now"]) == 0
        [run] = server.recurring_runs.values()
        [now] = server.runs.values()
        assert run["runtime_config"]["pipeline_root"] == "gs://bucket/tfx-root"
        assert now["runtime_config"]["pipeline_root"] == "gs://bucket/tfx-root"
        assert '"action": "replaced"' in capsys.readouterr().out
        assert schedule.main(args + root) == 0
        assert '"action": "unchanged"' in capsys.readouterr().out


@pytest.mark.parametrize("honour_filters", [True, False])
def test_lookups_find_names_past_the_first_page(packages, capsys, honour_filters):
    """With 250 other versions and recurring runs, a rerun still finds its own (by the name
    filter, or page by page where a server ignores it) and creates nothing."""
    with KfpContractServer(honour_filters=honour_filters) as server:
        server.pipelines["p"] = {"pipeline_id": "p", "display_name": "image-classifier"}
        server.versions["p"] = [{"pipeline_id": "p", "pipeline_version_id": f"v{n}",
                                 "display_name": f"image-classifier-{n:012x}"}
                                for n in range(250)]
        server.experiments["e"] = {"experiment_id": "e", "display_name": "retraining"}
        server.recurring_runs.update({f"r{n}": {"recurring_run_id": f"r{n}",
                                                "experiment_id": "e", "display_name": f"job-{n}"}
                                      for n in range(250)})
        assert _schedule(server, packages[0]) == 0
        assert '"action": "created"' in capsys.readouterr().out
        assert len(server.versions["p"]) == 251 and len(server.recurring_runs) == 251
        server.requests.clear()
        assert _schedule(server, packages[0]) == 0
        assert '"action": "unchanged"' in capsys.readouterr().out
        assert len(server.versions["p"]) == 251 and len(server.recurring_runs) == 251
        pages = [r["query"] for r in server.requests if r["path"].endswith("/versions")]
        assert len(pages) == (1 if honour_filters else 3)  # 100 a page
        assert all(q["page_size"] == ["100"] for q in pages)


@pytest.mark.parametrize("param, message", [("steps=3", "NAME one of batch_size, epochs"),
                                            ("epochs=many", "epochs takes a number_integer")])
def test_a_bad_parameter_is_a_usage_error(packages, capsys, param, message):
    with pytest.raises(SystemExit) as exit_:
        schedule.main(["--dry-run", "--package", packages[0], "--param", param])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
