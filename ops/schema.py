"""Export the inferred schema for curation: ``python -m ops.schema --out schema/schema.pbtxt``.

Takes the latest schema SchemaGen inferred in a run (same options as the local runner, e.g.
``--work-dir``), makes the image and label features required (one value in every example),
gives int labels the domain ``[0, num_classes - 1]``, and writes it as text. Commit it, edit it
as your data contract, and run with ``--schema-path schema/schema.pbtxt``: the pipeline then
imports it (ImportSchemaGen) and stops before training on data that breaks it.
"""
from __future__ import annotations

import argparse
import os
import sys

from pipeline.config import PipelineConfig
from domain.mlmd_queries import latest_artifact, metadata_store


def curate(schema, config: PipelineConfig):
    """Required image and label features; the label's id domain."""
    from tensorflow_metadata.proto.v0 import schema_pb2
    features = {f.name: f for f in schema.feature}
    for key in (config.image_key, config.label_key):
        if key not in features:
            raise KeyError(f"the inferred schema has no feature '{key}'")
        feature = features[key]
        feature.presence.min_fraction = 1.0
        feature.presence.min_count = 1
        if not feature.HasField("shape"):
            feature.value_count.min = feature.value_count.max = 1
    label = features[config.label_key]
    if config.label_format == "int":
        label.int_domain.CopyFrom(schema_pb2.IntDomain(
            name=config.label_key, min=0, max=config.num_classes - 1, is_categorical=True))
    return schema


def main(argv: list[str] | None = None) -> int:
    import tensorflow_data_validation as tfdv
    parser = argparse.ArgumentParser(prog="python -m ops.schema", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="schema/schema.pbtxt")
    args, rest = parser.parse_known_args(argv)
    config = PipelineConfig.from_args(rest, prog="python -m ops.schema")
    if config.data_root:  # the number of classes as the run resolved it (pipeline.data_shape)
        from pipeline.data_shape import resolve
        from pipeline.preflight import UserError
        try:
            config = resolve(config)[0]
        except UserError as err:
            print(f"schema: {err}", file=sys.stderr)
            return 2
    latest = latest_artifact(metadata_store(config.metadata_path), "Schema", "SchemaGen")
    if latest is None:
        print(f"schema: no SchemaGen schema in {config.metadata_path}: run the pipeline first",
              file=sys.stderr)
        return 1
    schema = curate(tfdv.load_schema_text(os.path.join(latest.uri, "schema.pbtxt")), config)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tfdv.write_schema_text(schema, args.out)
    print(f"Curated schema written to {args.out} (from {latest.uri}); run with "
          f"--schema-path {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
