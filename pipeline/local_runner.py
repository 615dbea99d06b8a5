"""Run the pipeline locally: LocalDagRunner, Beam DirectRunner, MLMD in SQLite.

``python -m pipeline.local_runner --help`` lists the options; with none it trains on the
embedded default dataset and pushes a blessed model under ``outputs/serving/``.
"""
from __future__ import annotations

import dataclasses
import os
import sys

from domain.contracts import RunOutcome
from pipeline import data_shape, preflight, rerun
from pipeline.config import OBJECT_STORES, STAGED_STORES, PipelineConfig
from pipeline.preflight import UserError
from pipeline.progress import readable_run


def resolve_data(config: PipelineConfig) -> PipelineConfig:
    """Writes the default dataset if the config names no data root."""
    if not config.uses_default_data:
        return config
    from pipeline.default_data import ensure_digits_dataset
    root = ensure_digits_dataset(config.default_data_root, config.image_key, config.label_key)
    return dataclasses.replace(config, data_root=root)


def observe(config: PipelineConfig):
    """The data span's fingerprint and the served version (or the one an identical run saw:
    ``rerun.observed_version``), as the pipeline's observers will see them: their cache keys,
    so that they rerun exactly when the world changed."""
    from components.live_inputs import resolve_span
    from pipeline.pipeline import Observed, input_config
    try:
        fingerprint = resolve_span(config.data_root, input_config(config),
                                   config.span).fingerprint
    except ValueError as err:  # a missing span or files
        raise UserError(f"--data-root: {err}") from None
    return Observed(data_fingerprint=fingerprint,
                    served_version=rerun.observed_version(config, fingerprint))


def resolve_input(config: PipelineConfig, announce=print) -> tuple[PipelineConfig, str]:
    """``config`` with the model's input and classes resolved from the data
    (``pipeline.data_shape``), announced first (with hints); returns it and what was said."""
    config, choice = data_shape.resolve(config)
    if choice is None:
        return config, ""
    said = "\n".join([choice.line(), *choice.hints])
    announce(said, flush=True)
    return config, said


def run(config: PipelineConfig) -> RunOutcome:
    """Runs the pipeline once; returns its outcome (see ``pipeline.outcome``) and the path of
    its HTML report (``report``). The model's input and classes left to the data are resolved
    first (``resolve_input``). An identical rerun of the last completed run is recorded
    as its cache hits without importing the training stack (``pipeline.rerun``)."""
    preflight.check_serving_dir(config)
    preflight.check_dask_scheduler(config)
    with preflight.run_lock(config):
        preflight.check_metadata(config)
        config, said = resolve_input(resolve_data(config))
        identity = rerun.identity(config)  # before the observers look: the world it keys
        replayed = rerun.replay(config, identity)
        if replayed is not None:
            return replayed
        preflight.check_data(config)
        preflight.check_teacher(config)
        if config.from_data:  # data the preflight found sound, yet nothing to size it by
            raise UserError("the model's input could not be told from the data: set "
                            + " ".join(data_shape.OPTIONS[n] for n in config.from_data))
        import ml_metadata as mlmd  # the training stack: once the preflight has passed
        from tfx import v1 as tfx

        from pipeline.outcome import latest_outcome
        from domain.mlmd_queries import last_execution_id
        from pipeline.pipeline import create_pipeline
        from pipeline.report import write_report
        connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(
            config.metadata_path)
        if os.path.exists(config.metadata_path):
            preflight.abandon_interrupted(mlmd.MetadataStore(connection))
        before = last_execution_id(config.metadata_path)
        observed = observe(config)
        tfx.orchestration.LocalDagRunner().run(create_pipeline(config, connection, observed))
        outcome = dataclasses.replace(latest_outcome(config, before), input_choice=said or None)
        outcome = dataclasses.replace(outcome, report=write_report(config, outcome, before))
        rerun.record(config, identity, observed.data_fingerprint, observed.served_version,
                     outcome, before)
        return outcome


def main(argv: list[str] | None = None) -> int:
    config = PipelineConfig.from_args(argv)
    scheme = config.pipeline_root.partition("://")[0]
    if scheme in STAGED_STORES:
        print(f"python -m pipeline.local_runner: error: --pipeline-root {config.pipeline_root}: "
              f"{scheme}:// roots are for Kubeflow runs (KFP's launcher stages them for each "
              f"task); here use a local path or {', '.join(OBJECT_STORES)}://", file=sys.stderr)
        return 2
    with preflight.one_line_errors(config), readable_run(config):
        outcome = run(config)
    print(f"\nPipeline root: {config.pipeline_root}")
    print(f"Metadata (MLMD SQLite): {config.metadata_path}")
    print(describe(outcome, config))
    print(f"Run report: {outcome.report}")
    return 0


def describe(outcome: RunOutcome, config: PipelineConfig) -> str:
    """The model's input, the gate decision and the push, in words."""
    chosen = f"{outcome.input_choice}\n" if outcome.input_choice else ""
    return chosen + _decision(outcome, config)


def _decision(outcome: RunOutcome, config: PipelineConfig) -> str:
    bound = config.min_accuracy if outcome.accuracy_bound is None else outcome.accuracy_bound
    gate = f"accuracy {outcome.accuracy:.4f} (gate: >= {bound:g}"
    if outcome.bound_reason and outcome.bound_reason != "min_accuracy":
        gate += f", {outcome.bound_reason}"
    if outcome.baseline_accuracy is None:
        gate += "; nothing served yet: absolute bound only)"
    else:
        gate += (f" and >= served version {outcome.baseline_version}'s "
                 f"{outcome.baseline_accuracy:.4f} - {config.max_regression})")
    if outcome.weakest_class is not None:
        gate += (f"\nWeakest class: {outcome.weakest_class}, recall {outcome.weakest_recall:.4f}"
                 + (f" (gate: >= {config.min_class_recall:g} for every class)"
                    if config.min_class_recall else ""))
    if outcome.warm_start:
        gate += f"\nWarm start: {outcome.warm_start}"
    if outcome.tflite:
        gate += f"\n{outcome.tflite}"
    if outcome.pushed:
        return f"Model BLESSED, {gate}\nPushed version {outcome.pushed_version}: " \
               f"{outcome.pushed_path}"
    verdict = "BLESSED" if outcome.blessed else "NOT blessed"
    if outcome.cached:
        verdict += " (earlier run: no new data, every component served from cache)"
    return (f"Model {verdict}, {gate}\nNothing pushed ({outcome.reason}); serving under "
            f"{config.push_dir} unchanged")


if __name__ == "__main__":
    sys.exit(main())
