"""The Dask path through the KFP v2 backend harness (tests/kfp_backend.py): a package compiled
with ``--beam-mode dask --dask-address <the session's loopback cluster>`` runs its first Beam
tasks (DataSpan, ImportExampleGen, ImageValidator) as the backend runs them, the Beam task
(ImageValidator; ImportExampleGen streams TFRecord splits itself, components.example_splits)
driving the cluster, and writes what the DirectRunner writes: every input record, in the
SHA-256 order ImportExampleGen gives records that ops.ingest did not order, and all of them
valid. The pods' disk is this machine's, which the workers
share (on a cluster they would not: kfp/README.md, a ``gs://`` root)."""
from __future__ import annotations

import hashlib

import pytest

from pipeline.kubeflow_runner import compile_pipeline
from tests.helpers import volume_config
from tests.kfp_backend import Backend

pytestmark = pytest.mark.kfp
FILES_PER_SPLIT = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory, dask_cluster):
    """``(backend, run, {split: [each input file's records]})``."""
    import tensorflow as tf
    from pipeline.default_data import digits_examples
    work = tmp_path_factory.mktemp("dask-kfp")
    volume = work / "volume"
    records = list(digits_examples())[:300]
    files = {}
    for split in ("train", "eval"):
        ours = [_canonical(r) for s, r in records if s == split]
        size = -(-len(ours) // FILES_PER_SPLIT)
        folder = volume / "images" / "span-1" / split
        folder.mkdir(parents=True)
        parts = {str(folder / f"data-{i}.gz"): ours[i * size:(i + 1) * size]
                 for i in range(FILES_PER_SPLIT)}
        for path, part in parts.items():
            with tf.io.TFRecordWriter(path, "GZIP") as writer:
                for record in part:
                    writer.write(record)
        files[split] = list(parts.values())
    config = volume_config(volume, "--beam-mode", "dask", "--dask-address", dask_cluster)
    package = compile_pipeline(config, str(work / "pipeline.yaml"))
    backend = Backend(work, "2.17")
    try:
        yield backend, backend.create_run(package, tasks={"ImageValidator"}), files
    finally:
        backend.close()


def _records(path) -> list[bytes]:
    import tensorflow as tf
    return [_canonical(r.numpy())
            for r in tf.data.TFRecordDataset(str(path), "GZIP" if path.suffix == ".gz" else "")]


def _written(backend, run, task: str, output: str, split: str) -> list[list[bytes]]:
    folder = backend.store_path(run.tasks[task].artifacts[output].uri) / f"Split-{split}"
    return [_records(path) for path in sorted(folder.iterdir())]


@pytest.mark.parametrize("split", ["train", "eval"])
def test_the_beam_tasks_write_what_the_direct_runner_writes(run, split):
    import json
    backend, result, files = run
    assert result.executed() == {"DataSpan", "ImportExampleGen", "ImageValidator"}
    expected = sorted((r for part in files[split] for r in part),
                      key=lambda record: hashlib.sha256(record).digest())
    for task, output in (("ImportExampleGen", "examples"), ("ImageValidator", "valid_examples")):
        written = _written(backend, result, task, output, split)
        assert [r for shard in written for r in shard] == expected, task
    folder = backend.store_path(result.tasks["ImageValidator"].artifacts["valid_examples"].uri)
    report = json.loads((folder / f"bad_images-{split}.json").read_text())
    assert report == {"valid": len(expected), "bad": []}


def _canonical(record: bytes) -> bytes:
    import tensorflow as tf
    return tf.train.Example.FromString(record).SerializeToString(deterministic=True)
