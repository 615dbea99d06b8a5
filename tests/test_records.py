"""TFRecords written without TensorFlow are the bytes TensorFlow writes and reads back."""
from __future__ import annotations

import os

from domain.records import write_splits


def test_written_splits_are_tensorflows_own_bytes_plain_and_gzipped(tmp_path):
    import tensorflow as tf

    records = [("train" if i % 3 else "eval", os.urandom(i * 37)) for i in range(30)]
    for compress in (False, True):
        target = str(tmp_path / f"data-{compress}")
        counts = write_splits(target, records, shards=2, compress=compress)
        assert counts == {"train": 20, "eval": 10}
        for split in ("train", "eval"):
            paths = sorted(tf.io.gfile.glob(os.path.join(target, split, "*")))
            assert len(paths) == 2 and all(p.endswith(".gz") == compress for p in paths)
            read = [r.numpy() for p in paths for r in tf.data.TFRecordDataset(
                p, compression_type="GZIP" if compress else "")]
            wanted = [r for s, r in records if s == split]
            assert sorted(read) == sorted(wanted)
            if not compress:
                reference = str(tmp_path / "reference.tfrecord")
                with tf.io.TFRecordWriter(reference) as writer:
                    for record in wanted[0::2]:
                        writer.write(record)
                with open(reference, "rb") as a, open(paths[0], "rb") as b:
                    assert a.read() == b.read()
