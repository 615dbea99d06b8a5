"""What the latest run produced, read back from MLMD and its artifacts."""
from __future__ import annotations

import ml_metadata as mlmd
import tensorflow_model_analysis as tfma
from ml_metadata.proto import metadata_store_pb2

from components.gate import ACCURACY_METRIC
from pipeline.config import PipelineConfig


def metadata_store(config: PipelineConfig) -> mlmd.MetadataStore:
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = config.metadata_path
    connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return mlmd.MetadataStore(connection)


def overall_metric(evaluation_uri: str, name: str = ACCURACY_METRIC) -> float:
    """A metric of the overall slice from a TFMA evaluation output."""
    for per_slice in tfma.load_metrics(evaluation_uri):
        if per_slice.slice_key.single_slice_keys:
            continue
        for entry in per_slice.metric_keys_and_values:
            if entry.key.name == name:
                return entry.value.double_value.value
    raise KeyError(f"no overall {name} in {evaluation_uri}")


def latest_outcome(config: PipelineConfig) -> dict:
    """``{accuracy, blessed, pushed, pushed_path}`` of the newest evaluation and push."""
    store = metadata_store(config)

    def latest(type_name: str):
        artifacts = store.get_artifacts_by_type(type_name)
        return max(artifacts, key=lambda a: a.id) if artifacts else None

    evaluation, blessing, pushed = (latest(t) for t in
                                    ("ModelEvaluation", "ModelBlessing", "PushedModel"))
    if evaluation is None or blessing is None or pushed is None:
        raise RuntimeError(f"no completed run recorded in {config.metadata_path}")
    is_pushed = bool(pushed.custom_properties["pushed"].int_value)
    return {
        "accuracy": overall_metric(evaluation.uri),
        "blessed": bool(blessing.custom_properties["blessed"].int_value),
        "pushed": is_pushed,
        "pushed_path": (pushed.custom_properties["pushed_destination"].string_value
                        if is_pushed else None),
    }
