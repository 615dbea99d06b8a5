"""Tasks retried as the backend retries them (the compiled retry policy: Argo runs the
executor pod again with the same ExecutorInput, the driver does not run again).

Each task with an effect outside its outputs (the pusher) or reading the world (the
observers) runs twice as a real process through ``pipeline.kfp_entrypoint``: the first
attempt's outputs are dropped, as when its pod is killed after the command ended but before
the launcher recorded them. The second attempt gives the same outputs, one push, and the
push record names the object store's URIs, not the pod's paths.
"""
from __future__ import annotations

import shutil

import pytest

from domain import registry
from domain.contracts import STORE_URI
from pipeline.kubeflow_runner import compile_pipeline
from tests.helpers import volume_config, write_examples
from tests.kfp_backend import Backend

RETRIED = {"DataSpan_executor", "ServedVersion_executor", "VersionedPusher_executor"}


class RetryingBackend(Backend):
    """Runs each ``RETRIED`` task's pod twice; the first attempt's outputs are lost."""

    def __init__(self, work):
        super().__init__(work)
        self.attempts: dict[str, list] = {}

    def _launch(self, component, container, executor_input, pod, *rest):
        label = component["executorLabel"]
        if label not in RETRIED:
            return super()._launch(component, container, executor_input, pod, *rest)
        recorded = len(self.artifacts)
        first = super()._launch(component, container, executor_input, pod, *rest)
        del self.artifacts[recorded:]  # never recorded: the pod died first
        shutil.rmtree(pod)  # a new pod: nothing staged survives
        second = super()._launch(component, container, executor_input, pod, *rest)
        self.attempts[label] = [first, second]
        return second


def _outputs(result) -> tuple:
    return result.parameters, {key: (artifact.uri, artifact.properties)
                               for key, artifact in result.artifacts.items()
                               if key != "executor-logs"}


@pytest.fixture(scope="module")
def retried_run(tmp_path_factory):
    from pipeline.default_data import digits_examples
    work = tmp_path_factory.mktemp("cluster")
    volume = work / "volume"
    write_examples(volume / "images" / "span-1", list(digits_examples())[:600])
    config = volume_config(volume, "--train-steps", "30", "--eval-steps", "3",
                           "--min-accuracy", "0.0", "--max-regression", "1.0")
    backend = RetryingBackend(work)
    try:
        yield backend, backend.create_run(compile_pipeline(config, str(work / "p.yaml"))), config
    finally:
        backend.close()


def test_a_retried_task_gives_the_same_outputs_and_pushes_once(retried_run):
    backend, run, config = retried_run
    assert set(backend.attempts) == RETRIED
    for label, (first, second) in backend.attempts.items():
        assert _outputs(first) == _outputs(second), label
    pushed = run.tasks["VersionedPusher"].artifacts["pushed_model"].properties
    assert pushed["pushed"] == 1 and pushed["pushed_version"] == 1
    assert registry.versions(config.push_dir) == [1]
    assert [e["version"] for e in registry.read_manifest(config.push_dir)] == [1]
    assert registry.served_version(config.push_dir) == 1


def test_the_push_record_names_the_store_not_the_pod(retried_run):
    backend, run, config = retried_run
    entry = registry.read_manifest(config.push_dir)[0]
    assert entry["model_uri"] == run.tasks["Trainer"].artifacts["model"].uri
    assert entry["examples_uri"] == run.tasks["ImageValidator"].artifacts["valid_examples"].uri
    assert entry["evaluation_uri"] == run.tasks["Evaluator"].artifacts["evaluation"].uri
    assert entry["pushed_model_uri"] == run.tasks["VersionedPusher"].artifacts[
        "pushed_model"].uri
    assert all(entry[key].startswith(f"{run.root}/") for key in (
        "model_uri", "examples_uri", "evaluation_uri", "pushed_model_uri"))
    assert not any(STORE_URI in artifact.properties for artifact in backend.artifacts)
