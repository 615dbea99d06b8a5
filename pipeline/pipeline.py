"""``create_pipeline(config)``: the one pipeline definition every runner uses."""
from __future__ import annotations

import json

from tfx import v1 as tfx

from components.anomaly_gate import AnomalyGate
from components.gate import eval_config
from components.image_validator import ImageValidator
from components.versioned_pusher import VersionedPusher
from pipeline.config import PipelineConfig

PREPROCESSING_FN = "modules.preprocessing.preprocessing_fn"
RUN_FN = "modules.trainer.run_fn"


def create_pipeline(config: PipelineConfig, metadata_connection_config=None) -> tfx.dsl.Pipeline:
    """ImportExampleGen -> ImageValidator -> StatisticsGen -> SchemaGen (or ImportSchemaGen of
    a curated schema) -> ExampleValidator -> AnomalyGate -> Transform -> Trainer -> Evaluator
    (vs the latest blessed model) -> VersionedPusher, over TFRecords under
    ``config.data_root``/[span-N/]{train,eval}/.

    ``metadata_connection_config`` is the local runner's MLMD; orchestrators bring their own.
    """
    prefix = "span-{SPAN}/" if config.spans else ""
    example_gen = tfx.components.ImportExampleGen(
        input_base=config.data_root,
        input_config=tfx.proto.Input(splits=[
            tfx.proto.Input.Split(name=split, pattern=f"{prefix}{split}/*")
            for split in ("train", "eval")]))
    image_validator = ImageValidator(
        examples=example_gen.outputs["examples"],
        image_config=json.dumps(config.transform_config(), sort_keys=True),
        max_bad_fraction=config.max_bad_image_fraction, id_key=config.id_key)
    examples = image_validator.outputs["valid_examples"]
    statistics_gen = tfx.components.StatisticsGen(examples=examples)
    if config.schema_path:  # the curated schema, the data contract
        schema_gen = tfx.components.ImportSchemaGen(schema_file=config.schema_path)
    else:
        schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"],
                                              infer_feature_shape=True)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    drift, extra_nodes = {}, []
    if config.drift_config:  # the previous run's statistics, resolved before this run's exist
        previous = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
            statistics=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ExampleStatistics,
                                       producer_component_id=statistics_gen.id,
                                       output_key="statistics"),
        ).with_id("previous_statistics_resolver")
        statistics_gen.add_upstream_node(previous)
        drift, extra_nodes = {"previous_statistics": previous.outputs["statistics"]}, [previous]
    anomaly_gate = AnomalyGate(anomalies=example_validator.outputs["anomalies"],
                               statistics=statistics_gen.outputs["statistics"],
                               schema=schema_gen.outputs["schema"],
                               allowed_types=",".join(config.allowed_anomalies),
                               drift_config=json.dumps(config.drift_config), **drift)
    transform = tfx.components.Transform(
        examples=examples, schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN, custom_config=config.transform_config())
    transform.add_upstream_node(anomaly_gate)
    trainer = tfx.components.Trainer(
        run_fn=RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(num_steps=config.train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=config.eval_steps),
        custom_config=config.trainer_config())
    baseline = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    evaluator = tfx.components.Evaluator(
        examples=examples, model=trainer.outputs["model"],
        baseline_model=baseline.outputs["model"],
        eval_config=eval_config(config.label_key, config.min_accuracy, config.max_regression,
                                config.min_class_recall))
    pusher = VersionedPusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        evaluation=evaluator.outputs["evaluation"], examples=examples,
        base_directory=config.push_dir, keep_versions=config.keep_versions)
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=[example_gen, image_validator, statistics_gen, schema_gen, example_validator,
                    anomaly_gate, transform, trainer, baseline, evaluator, pusher] + extra_nodes,
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=config.beam_pipeline_args)
