"""A stock TFX pipeline over pre-split image TFRecords, written the way TFX's examples write
one (tfx/examples/mnist/mnist_pipeline_native_keras.py): the standard components, the Keras
module beside this file, LocalDagRunner.

``python bench/stock_tfx/stock_pipeline.py <data root with train/ and eval/> <work dir>``
"""
import os
import sys
from typing import List

import absl
import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

_module_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'module.py')

_beam_pipeline_args = [
    '--direct_running_mode=multi_processing',
    # 0 means auto-detect based on on the number of CPUs available
    # during execution time.
    '--direct_num_workers=0',
]


def _create_pipeline(pipeline_name: str, pipeline_root: str, data_root: str,
                     module_file: str, serving_model_dir: str, metadata_path: str,
                     beam_pipeline_args: List[str],
                     accuracy_threshold: float = 0.6) -> tfx.dsl.Pipeline:
  """Implements the image classification pipeline with TFX."""
  # Brings data into the pipeline: the records are already split.
  example_gen = tfx.components.ImportExampleGen(
      input_base=data_root,
      input_config=tfx.proto.Input(splits=[
          tfx.proto.Input.Split(name='train', pattern='train/*'),
          tfx.proto.Input.Split(name='eval', pattern='eval/*'),
      ]))

  # Computes statistics over data for visualization and example validation.
  statistics_gen = tfx.components.StatisticsGen(
      examples=example_gen.outputs['examples'])

  # Generates schema based on statistics files.
  schema_gen = tfx.components.SchemaGen(
      statistics=statistics_gen.outputs['statistics'], infer_feature_shape=True)

  # Performs anomaly detection based on statistics and data schema.
  example_validator = tfx.components.ExampleValidator(
      statistics=statistics_gen.outputs['statistics'],
      schema=schema_gen.outputs['schema'])

  # Performs transformations and feature engineering in training and serving.
  transform = tfx.components.Transform(
      examples=example_gen.outputs['examples'],
      schema=schema_gen.outputs['schema'],
      module_file=module_file)

  # Uses user-provided Python function that trains a Keras model.
  trainer = tfx.components.Trainer(
      module_file=module_file,
      examples=transform.outputs['transformed_examples'],
      transform_graph=transform.outputs['transform_graph'],
      schema=schema_gen.outputs['schema'],
      train_args=tfx.proto.TrainArgs(num_steps=750),
      eval_args=tfx.proto.EvalArgs(num_steps=20))

  # Uses TFMA to compute evaluation statistics over features of a model and
  # performs quality validation of a candidate model.
  eval_config = tfma.EvalConfig(
      model_specs=[tfma.ModelSpec(label_key='label')],
      slicing_specs=[tfma.SlicingSpec()],
      metrics_specs=[
          tfma.MetricsSpec(metrics=[
              tfma.MetricConfig(class_name='ExampleCount'),
              tfma.MetricConfig(
                  class_name='SparseCategoricalAccuracy',
                  threshold=tfma.MetricThreshold(
                      value_threshold=tfma.GenericValueThreshold(
                          lower_bound={'value': accuracy_threshold})))
          ])
      ])
  evaluator = tfx.components.Evaluator(
      examples=example_gen.outputs['examples'],
      model=trainer.outputs['model'],
      eval_config=eval_config)

  # Checks whether the model passed the validation steps and pushes the model
  # to a file destination if check passed.
  pusher = tfx.components.Pusher(
      model=trainer.outputs['model'],
      model_blessing=evaluator.outputs['blessing'],
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(
              base_directory=serving_model_dir)))

  return tfx.dsl.Pipeline(
      pipeline_name=pipeline_name,
      pipeline_root=pipeline_root,
      components=[
          example_gen, statistics_gen, schema_gen, example_validator, transform,
          trainer, evaluator, pusher
      ],
      enable_cache=True,
      metadata_connection_config=tfx.orchestration.metadata
      .sqlite_metadata_connection_config(metadata_path),
      beam_pipeline_args=beam_pipeline_args)


if __name__ == '__main__':
  absl.logging.set_verbosity(absl.logging.INFO)
  _data_root, _work_dir = sys.argv[1:3]
  tfx.orchestration.LocalDagRunner().run(
      _create_pipeline(
          pipeline_name='stock_images',
          pipeline_root=os.path.join(_work_dir, 'pipelines'),
          data_root=_data_root,
          module_file=_module_file,
          serving_model_dir=os.path.join(_work_dir, 'serving_model'),
          metadata_path=os.path.join(_work_dir, 'metadata.db'),
          beam_pipeline_args=_beam_pipeline_args))
