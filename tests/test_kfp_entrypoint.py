"""pipeline.kfp_entrypoint: each adaptation of the backend's ExecutorInput, on its own."""
from __future__ import annotations

from pipeline.kfp_entrypoint import LOG_OUTPUT, adapt, local_path

SPEC = {"artifacts": {"examples": {"artifactType": {
    "instanceSchema": "title: tfx.Examples\ntype: object\n"}}}}


def _input(uri="minio://mlpipeline/v2/artifacts/p/run/ImportExampleGen/x/examples", kind=None):
    return {
        "inputs": {"artifacts": {"examples": {"artifacts": [{
            "name": "17", "uri": uri, "type": kind or {"instanceSchema": ""},
            "metadata": {"span": 2.0}}]}}, "parameterValues": {"splits": "[]"}},
        "outputs": {"artifacts": {
            "statistics": {"artifacts": [{"name": "statistics", "uri": uri + "-stats",
                                          "type": {"instanceSchema": "title: tfx.X\n"}}]},
            LOG_OUTPUT: {"artifacts": [{"name": LOG_OUTPUT, "uri": uri + "-logs",
                                        "type": {"schemaTitle": "system.Artifact"}}]}},
            "outputFile": "/minio/mlpipeline/v2/artifacts/p/run/T/x/output_metadata.json"},
    }


def test_untyped_inputs_get_the_type_of_the_components_inputs_spec():
    adapted, _ = adapt(_input(), SPEC)
    artifact = adapted["inputs"]["artifacts"]["examples"]["artifacts"][0]
    assert artifact["type"] == SPEC["artifacts"]["examples"]["artifactType"]
    typed = {"schemaTitle": "tfx.Examples"}  # a type the backend did send stays
    adapted, _ = adapt(_input(kind=typed), SPEC)
    assert adapted["inputs"]["artifacts"]["examples"]["artifacts"][0]["type"] == typed


def test_the_log_output_is_left_to_the_launcher():
    adapted, remote = adapt(_input(), SPEC)
    assert LOG_OUTPUT not in adapted["outputs"]["artifacts"]
    assert all(not uri.endswith("-logs") for uri in remote.values())


def test_staged_stores_become_the_launchers_local_paths_and_back(tmp_path):
    original = _input()
    adapted, remote = adapt(original, SPEC, pod_root=str(tmp_path))
    uri = original["inputs"]["artifacts"]["examples"]["artifacts"][0]["uri"]
    assert adapted["inputs"]["artifacts"]["examples"]["artifacts"][0]["uri"] == \
        str(tmp_path / "minio/mlpipeline/v2/artifacts/p/run/ImportExampleGen/x/examples")
    local = adapted["outputs"]["artifacts"]["statistics"]["artifacts"][0]["uri"]
    assert remote == {local: uri + "-stats", str(tmp_path / "minio" / uri[len("minio://"):]): uri}
    assert local_path("s3://bucket/key") == "/s3/bucket/key"
    assert local_path("gs://bucket/key") == "gs://bucket/key"  # TensorFlow reads GCS itself
    assert local_path("/mnt/data/x") == "/mnt/data/x"
    assert original["inputs"]["artifacts"]["examples"]["artifacts"][0]["uri"] == uri  # a copy


def test_staged_artifacts_tell_their_store_uri_and_gs_ones_nothing():
    from tfx.types import standard_artifacts

    from domain.contracts import STORE_URI, store_uri
    from pipeline.kfp_entrypoint import _store_uris
    _, remote = adapt(_input(), SPEC)
    staged, direct = standard_artifacts.Examples(), standard_artifacts.Examples()
    staged.uri, direct.uri = "/minio/mlpipeline/v2/artifacts/p/run/ImportExampleGen/x/examples", \
        "gs://bucket/x"
    _store_uris({"examples": [staged, direct]}, remote)
    assert store_uri(staged) == "minio://mlpipeline/v2/artifacts/p/run/ImportExampleGen/x/examples"
    assert store_uri(direct) == "gs://bucket/x" and not direct.has_custom_property(STORE_URI)


def test_ids_beyond_doubles_travel_exactly():
    """An int64 id through the ExecutorOutput (a Struct: doubles) and back into an artifact."""
    from kfp.pipeline_spec import pipeline_spec_pb2
    from tfx.types import standard_artifacts

    from pipeline.kfp_entrypoint import _exact_ids_in, _exact_ids_out
    model_id = 2313562033302180852
    model = standard_artifacts.Model()
    model.set_int_custom_property("source_model_id", model_id)
    model.set_int_custom_property("served_version", 3)
    runtime = pipeline_spec_pb2.RuntimeArtifact()
    runtime.metadata["source_model_id"] = float(model_id)  # what TFX writes: a double
    _exact_ids_out(runtime, model)
    assert runtime.metadata["source_model_id"] == str(model_id)
    received = standard_artifacts.Model()
    for key, value in (("source_model_id", str(model_id)), ("served_version", 3.0)):
        received.set_json_value_custom_property(key, value)  # as TFX parses metadata
    _exact_ids_in({"model": [received]})
    assert received.get_int_custom_property("source_model_id") == model_id
    assert received.get_int_custom_property("served_version") == 3
