"""``create_pipeline(config)``: the one pipeline definition every runner uses."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import tensorflow_data_validation as tfdv
from google.protobuf import json_format
from tfx import v1 as tfx

from components.anomaly_gate import AnomalyGate
from components.gate import eval_config
from components.image_validator import ImageValidator
from components.live_inputs import DataSpan, ServedModel, ServedVersion
from components.standard import TRAINER_PARAMETERS, Evaluator, ImportExampleGen, Trainer
from components.versioned_pusher import VersionedPusher
from domain import spans
from modules.provenance import source_sha256
from pipeline.config import (PREPROCESSING_FN, RUN_FN, RUN_TIME_PARAMETERS, TUNER_FN,
                             PipelineConfig)

# Steps that look at the world (data, serving dir): Kubeflow must never serve them from cache.
OBSERVERS = ("DataSpan", "ServedVersion")
# The execution property holding the hash of a custom component's code (``components/`` and
# the project modules it imports): part of its cache key, so an edit reruns it.
CODE_SHA256 = "code_sha256"


@dataclasses.dataclass(frozen=True)
class Observed:
    """What the local runner saw just before a run: the observers' cache keys."""
    data_fingerprint: str
    served_version: int


def input_config(config: PipelineConfig) -> str:
    """ImportExampleGen's input config (JSON): ``[span-{SPAN}/]{train,eval}/*``."""
    return json_format.MessageToJson(tfx.proto.Input(splits=[
        tfx.proto.Input.Split(name=split, pattern=pattern)
        for split, pattern in spans.split_patterns(config.spans).items()]), sort_keys=True)


def run_time_values(config: PipelineConfig, observed: Observed | None) -> dict[str, Any]:
    """The run-time options: the config's values for a local run (``observed`` given), else
    Kubeflow run-time parameters defaulting to them."""
    values = {name: getattr(config, name) for name in RUN_TIME_PARAMETERS}
    if observed is not None:
        return values
    return {name: tfx.dsl.experimental.RuntimeParameter(name=name, ptype=ptype,
                                                        default=values[name])
            for name, ptype in RUN_TIME_PARAMETERS.items()}


def _anomaly_gate(config: PipelineConfig, example_validator, statistics_gen, schema_gen,
                  served) -> AnomalyGate:
    """Stops the run on anomalies and, with a drift threshold set, on drift from the statistics
    of the data the served model was trained on."""
    drift = {"previous_statistics": served.outputs["statistics"]} if config.drift_config else {}
    return AnomalyGate(anomalies=example_validator.outputs["anomalies"],
                       statistics=statistics_gen.outputs["statistics"],
                       schema=schema_gen.outputs["schema"],
                       allowed_types=",".join(config.allowed_anomalies),
                       drift_config=json.dumps(config.drift_config), **drift)


def _tuner(config: PipelineConfig, transform, schema_gen) -> tfx.components.Tuner:
    """KerasTuner's search on the transformed data (``modules.tuner``)."""
    return tfx.components.Tuner(
        tuner_fn=TUNER_FN, examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(num_steps=config.train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=config.eval_steps),
        custom_config=config.tuner_config())


def create_pipeline(config: PipelineConfig, metadata_connection_config=None,
                    observed: Observed | None = None) -> tfx.dsl.Pipeline:
    """DataSpan -> ImportExampleGen -> ImageValidator -> StatisticsGen -> SchemaGen (or
    ImportSchemaGen of a curated schema) -> ExampleValidator -> AnomalyGate -> Transform ->
    (Tuner, with ``tune``) -> Trainer -> Evaluator (vs the served model: ServedVersion ->
    ServedModel) -> VersionedPusher, over TFRecords under
    ``config.data_root``/[span-N/]{train,eval}/.

    ``metadata_connection_config`` and ``observed`` come from the local runner; Kubeflow
    brings its own MLMD, runs the observers every time and takes the run-time options as
    pipeline parameters (``RUN_TIME_PARAMETERS``). No Resolver nodes: open-source Kubeflow
    Pipelines cannot run them.
    """
    run_time = run_time_values(config, observed)
    data_span = DataSpan(data_root=config.data_root, input_config=input_config(config),
                         span=run_time["span"],
                         observed=observed.data_fingerprint if observed else "")
    example_gen = ImportExampleGen(
        input_base=config.data_root,
        input_config=json_format.Parse(input_config(config), tfx.proto.Input()),
        range_config=data_span.outputs["range_config"].future()[0].value,
        data_fingerprint=data_span.outputs["fingerprint"].future()[0].value)
    # Locally the runner observed the served version (a replay included) for the cache key;
    # on Kubeflow, never cached, the step itself checks for an identical earlier run.
    served_version = ServedVersion(
        base_directory=config.push_dir, config_sha256=config.definition_sha256(),
        **{name: run_time[name] for name in RUN_TIME_PARAMETERS},
        **({"observed": str(observed.served_version)} if observed else {
            "data_fingerprint": data_span.outputs["fingerprint"].future()[0].value}))
    served = ServedModel(base_directory=config.push_dir,
                         version=served_version.outputs["version"].future()[0].value)
    image_validator = ImageValidator(
        examples=example_gen.outputs["examples"],
        image_config=json.dumps(config.transform_config(), sort_keys=True),
        max_bad_fraction=config.max_bad_image_fraction, id_key=config.id_key)
    examples = image_validator.outputs["valid_examples"]
    # Top values and uniques by sketches (Misra-Gries, KMV): TFDV's default counts every
    # distinct value of every string feature in memory, each encoded image included.
    statistics_gen = tfx.components.StatisticsGen(
        examples=examples, stats_options=tfdv.StatsOptions(use_sketch_based_topk_uniques=True))
    if config.schema_path:  # the curated schema, the data contract
        schema_gen = tfx.components.ImportSchemaGen(schema_file=config.schema_path)
    else:
        schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"],
                                              infer_feature_shape=True)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    anomaly_gate = _anomaly_gate(config, example_validator, statistics_gen, schema_gen, served)
    # No statistics of Transform's input and output: StatisticsGen has the input's (read by
    # the gate, the drift check and the pusher); at 18,000 images they were over half of
    # Transform's time.
    transform = tfx.components.Transform(
        examples=examples, schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN, custom_config=config.transform_config(),
        disable_statistics=True)
    transform.add_upstream_node(anomaly_gate)
    optional_inputs = {"base_model": served.outputs["model"]} if config.warm_start else {}
    tuning = [_tuner(config, transform, schema_gen)] if config.tune else []
    if tuning:
        optional_inputs["hyperparameters"] = tuning[0].outputs["best_hyperparameters"]
    trainer = Trainer(
        run_fn=RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        eval_args=tfx.proto.EvalArgs(num_steps=config.eval_steps),
        custom_config=config.trainer_config(),
        run_time={name: run_time[name] for name in TRAINER_PARAMETERS}, **optional_inputs)
    evaluator = Evaluator(
        examples=examples, model=trainer.outputs["model"],
        baseline_model=served.outputs["model"],
        eval_config=eval_config(config.label_key, config.min_accuracy, config.max_regression,
                                config.min_class_recall),
        min_accuracy=run_time["min_accuracy"], serving_dir=config.push_dir)
    pusher = VersionedPusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        evaluation=evaluator.outputs["evaluation"], examples=examples,
        baseline_model=served.outputs["model"], statistics=statistics_gen.outputs["statistics"],
        base_directory=config.push_dir, keep_versions=config.keep_versions,
        definition=served_version.outputs["definition"].future()[0].value,
        class_names=json.dumps(config.trainer_config()["class_names"]),
        allow_new_classes=int(config.allow_new_classes))
    components = [data_span, example_gen, image_validator, statistics_gen, schema_gen,
                  example_validator, anomaly_gate, transform, *tuning, trainer, served_version,
                  served, evaluator, pusher]
    # TFX keys a component by its class path, not by its code. The observers are keyed by
    # what they observe, which the runner computes with the current code (and Kubeflow runs
    # them every time): keying them by code too would make every edit of the serving dir's
    # code new data, retraining everything.
    for node in components:
        if type(node).__module__.startswith("components.") and node.id not in OBSERVERS:
            node.exec_properties[CODE_SHA256] = source_sha256(type(node).__module__)
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=components,
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=config.beam_pipeline_args)
