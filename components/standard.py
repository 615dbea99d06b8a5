"""TFX's ImportExampleGen, Trainer and Evaluator with run-time inputs, for every orchestrator.

Each subclass keeps TFX's component (its spec, driver and id) and wraps its executor:

* ``ImportExampleGen`` resolves ``{SPAN}`` patterns itself when no driver ran before it (on
  open-source Kubeflow Pipelines no ExampleGen driver runs: only Vertex honours TFX's
  pre-cache check), and takes ``data_fingerprint`` so that its cache key changes with the data;
  it writes its input splits in bounded memory, without TFX's in-memory reshuffle
  (``components.example_splits``);
* ``Trainer`` takes ``train_steps``, ``epochs``, ``learning_rate`` and ``batch_size`` as
  execution properties (Kubeflow run-time parameters) and hands them to ``run_fn``;
* ``Evaluator`` takes ``min_accuracy`` likewise, raised to the best version pushed on the
  same data less the tolerance (``components.gate.regression_floor``, from the push records
  in ``serving_dir``), and evaluates without a baseline when the served-model input is empty
  (nothing served yet: only the absolute bound applies). The bound it applied and why are
  custom properties of its evaluation (``ACCURACY_BOUND``, ``BOUND_REASON``); the
  precision, recall, F1 and support per class name of the candidate and the served model
  are written beside it (``CLASS_METRICS``, for the model card).
"""
from __future__ import annotations

import json
import os
from typing import Any

from tfx import v1 as tfx
from tfx.components.evaluator import executor as evaluator_executor
from tfx.components.example_gen import driver as example_gen_driver
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen import write_split
from tfx.components.example_gen.import_example_gen import executor as import_executor
from tfx.components.trainer import executor as trainer_executor
from tfx.components.util import examples_utils
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2, trainer_pb2
from tfx.types import artifact_utils, standard_component_specs as keys
from tfx.utils import io_utils, path_utils, proto_utils

from domain import registry
from components import example_splits
from components.gate import (CLASS_METRICS, accuracy_bound, class_metrics, regression_floor,
                             tolerance, with_min_accuracy)
from components.image_validator import FINGERPRINT
from domain.features import TRAINING_FILE

TRAINER_PARAMETERS = ("train_steps", "epochs", "learning_rate", "batch_size")
ACCURACY_BOUND, BOUND_REASON = "accuracy_bound", "accuracy_bound_reason"


def _add_exec_properties(component, values: dict[str, Any]) -> None:
    """Extra execution properties (constants or run-time parameters) of a TFX component."""
    component.exec_properties.update(values)


# What ``example_splits`` writes: records as they are, in TFRecord files.
STREAMED_PAYLOADS = (example_gen_pb2.FORMAT_TF_EXAMPLE, example_gen_pb2.FORMAT_TF_SEQUENCE_EXAMPLE,
                     example_gen_pb2.FORMAT_PROTO)
STREAMED_FILES = (example_gen_pb2.FILE_FORMAT_UNSPECIFIED, example_gen_pb2.FORMAT_TFRECORDS_GZIP)


def streamed_splits(exec_properties) -> list | None:
    """The input splits ``example_splits`` writes in bounded memory (each split read on its
    own, TFRecords in and out), or None: TFX's Beam path then (a hash split, Parquet)."""
    output_config = proto_utils.json_to_proto(exec_properties[keys.OUTPUT_CONFIG_KEY],
                                              example_gen_pb2.Output())
    if (output_config.split_config.splits
            or exec_properties.get(keys.OUTPUT_DATA_FORMAT_KEY) not in STREAMED_PAYLOADS
            or exec_properties.get(keys.OUTPUT_FILE_FORMAT_KEY, 0) not in STREAMED_FILES):
        return None
    return list(proto_utils.json_to_proto(exec_properties[keys.INPUT_CONFIG_KEY],
                                          example_gen_pb2.Input()).splits)


class _SpanResolvingExecutor(import_executor.Executor):
    def Do(self, input_dict, output_dict, exec_properties):
        if exec_properties.get(example_gen_utils.SPAN_PROPERTY_NAME) is None:  # no driver ran
            exec_properties = example_gen_driver.FileBasedDriver(None).resolve_exec_properties(
                dict(exec_properties), None, None)
            examples = artifact_utils.get_single_instance(output_dict[keys.EXAMPLES_KEY])
            example_gen_driver.update_output_artifact(exec_properties, examples.mlmd_artifact)
        splits = streamed_splits(exec_properties)
        if splits is None:
            return super().Do(input_dict, output_dict, exec_properties)
        self._log_startup(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(output_dict[keys.EXAMPLES_KEY])
        examples.split_names = artifact_utils.encode_split_names([s.name for s in splits])
        for split in splits:
            example_splits.write_split(exec_properties[keys.INPUT_BASE_KEY], split.pattern,
                                       artifact_utils.get_split_uri([examples], split.name))
        examples_utils.set_payload_format(examples, exec_properties[keys.OUTPUT_DATA_FORMAT_KEY])
        examples_utils.set_file_format(examples, write_split.to_file_format_str(
            example_gen_pb2.FORMAT_TFRECORDS_GZIP))


class ImportExampleGen(tfx.components.ImportExampleGen):
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(_SpanResolvingExecutor)

    def __init__(self, *, data_fingerprint, **kwargs):
        super().__init__(**kwargs)
        _add_exec_properties(self, {"data_fingerprint": data_fingerprint})


class _RunTimeTrainerExecutor(trainer_executor.GenericExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        values = {name: exec_properties[name] for name in TRAINER_PARAMETERS}
        check_trainer_parameters(**values)
        config = json.loads(exec_properties[keys.CUSTOM_CONFIG_KEY])
        config.update({k: v for k, v in values.items() if k != "train_steps"})
        train_args = proto_utils.json_to_proto(exec_properties[keys.TRAIN_ARGS_KEY],
                                               trainer_pb2.TrainArgs())
        train_args.num_steps = int(values["train_steps"])
        super().Do(input_dict, output_dict, dict(
            exec_properties, **{keys.CUSTOM_CONFIG_KEY: json.dumps(config),
                                keys.TRAIN_ARGS_KEY: proto_utils.proto_to_json(train_args)}))


def check_trainer_parameters(train_steps: int, epochs: int, learning_rate: float,
                             batch_size: int) -> None:
    """Raises ``ValueError`` naming the first invalid run-time training parameter
    (``train_steps`` and ``epochs`` 0: derived from the data size)."""
    for name, value, least in (("train_steps", train_steps, 0), ("epochs", epochs, 0),
                               ("batch_size", batch_size, 1)):
        if int(value) < least:
            raise ValueError(f"run-time parameter {name} must be >= {least}, got {value}")
    if not float(learning_rate) > 0:
        raise ValueError(f"run-time parameter learning_rate must be > 0, got {learning_rate}")


class Trainer(tfx.components.Trainer):
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(_RunTimeTrainerExecutor)

    def __init__(self, *, run_time: dict[str, Any], **kwargs):
        """``run_time``: a value (or run-time parameter) for each of ``TRAINER_PARAMETERS``."""
        if set(run_time) != set(TRAINER_PARAMETERS):
            raise ValueError(f"run_time needs exactly {TRAINER_PARAMETERS}")
        super().__init__(train_args=tfx.proto.TrainArgs(), **kwargs)
        _add_exec_properties(self, run_time)


def has_served_model(baseline) -> bool:
    """Whether a ``ServedModel`` artifact holds a model (nothing served: an empty one)."""
    return fileio.isdir(path_utils.serving_model_path(baseline.uri))


class _ServedBaselineEvaluatorExecutor(evaluator_executor.Executor):
    def Do(self, input_dict, output_dict, exec_properties):
        input_dict = dict(input_dict)
        if not all(has_served_model(b) for b in input_dict.get(keys.BASELINE_MODEL_KEY, [])):
            del input_dict[keys.BASELINE_MODEL_KEY]  # nothing served: absolute bound only
        examples = input_dict[keys.EXAMPLES_KEY][0]
        config = exec_properties[keys.EVAL_CONFIG_KEY]
        bound, reason = accuracy_bound(float(exec_properties["min_accuracy"]), regression_floor(
            registry.read_manifest(exec_properties["serving_dir"]),
            examples.get_string_custom_property(FINGERPRINT)
            if examples.has_custom_property(FINGERPRINT) else None, tolerance(config)))
        evaluation = artifact_utils.get_single_instance(output_dict[keys.EVALUATION_KEY])
        evaluation.set_float_custom_property(ACCURACY_BOUND, bound)
        evaluation.set_string_custom_property(BOUND_REASON, reason)
        super().Do(input_dict, output_dict, dict(
            exec_properties, **{keys.EVAL_CONFIG_KEY: with_min_accuracy(config, bound)}))
        model = artifact_utils.get_single_instance(input_dict[keys.MODEL_KEY])
        names = json.loads(io_utils.read_string_file(os.path.join(
            path_utils.serving_model_path(model.uri), TRAINING_FILE)))["class_names"]
        io_utils.write_string_file(os.path.join(evaluation.uri, CLASS_METRICS), json.dumps(
            class_metrics(evaluation.uri, names), indent=1))


class Evaluator(tfx.components.Evaluator):
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(_ServedBaselineEvaluatorExecutor)

    def __init__(self, *, min_accuracy, serving_dir: str, **kwargs):
        """``serving_dir``: the model's versions and push records (``config.push_dir``)."""
        super().__init__(**kwargs)
        _add_exec_properties(self, {"min_accuracy": min_accuracy, "serving_dir": serving_dir})
