"""Sharded TFRecord splits, written all or nothing (the embedded data, ingest, generators)."""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Iterable

from domain.features import SPLITS

READABLE_DIR, READABLE_FILE = 0o755, 0o644


def compression(path: str) -> str:
    """The ``compression_type`` of a TFRecord file for TensorFlow: GZIP by its ``.gz`` suffix."""
    return "GZIP" if path.endswith(".gz") else ""


def write_splits(target: str, records: Iterable[tuple[str, bytes]], shards: int = 1,
                 name: str = "data", compress: bool = False) -> dict[str, int]:
    """Writes ``(split, serialized record)`` pairs round-robin into ``shards`` files per split,
    ``<target>/<split>/<name>-0000i-of-0000N.tfrecord[.gz]``; returns the records per split.

    The files go to a staging sibling renamed to ``target`` at the end (an empty ``target`` is
    replaced), so a crash or error leaves nothing half-written; raises ``FileExistsError`` if
    ``target`` is written by another process meanwhile. Folders get mode 0755 and files 0644
    (not ``mkdtemp``'s 0700): the pipeline's pods and other users read them.
    """
    import tensorflow as tf

    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}-", dir=parent)
    os.chmod(staging, READABLE_DIR)
    suffix = ".tfrecord.gz" if compress else ".tfrecord"
    counts = dict.fromkeys(SPLITS, 0)
    try:
        writers = {}
        for split in SPLITS:
            os.mkdir(os.path.join(staging, split))
            os.chmod(os.path.join(staging, split), READABLE_DIR)  # whatever the umask
            writers[split] = [tf.io.TFRecordWriter(
                os.path.join(staging, split, f"{name}-{i:05d}-of-{shards:05d}{suffix}"),
                "GZIP" if compress else None) for i in range(shards)]
        for split, record in records:
            writers[split][counts[split] % shards].write(record)
            counts[split] += 1
        for split_writers in writers.values():
            for writer in split_writers:
                writer.close()
        for split in SPLITS:
            for file in os.listdir(os.path.join(staging, split)):
                os.chmod(os.path.join(staging, split, file), READABLE_FILE)
        try:
            if os.path.isdir(target):
                os.rmdir(target)  # only ever an empty one
            os.rename(staging, target)
        except OSError as err:  # ENOTEMPTY, EEXIST: another writer got there first
            if os.path.isdir(target) and os.listdir(target):
                raise FileExistsError(f"{target} was written meanwhile") from err
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts
