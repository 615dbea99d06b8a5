"""TFRecord files: sharded splits written all or nothing (the embedded data, ingest,
generators), and their compression by name. Written in TFRecord's own framing (length, masked
CRC-32C of the length, data, masked CRC-32C of the data), so no TensorFlow is imported."""
from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
from typing import BinaryIO, Iterable

import google_crc32c

from domain.features import SPLITS

READABLE_DIR, READABLE_FILE = 0o755, 0o644


def compression(path: str) -> str:
    """The ``compression_type`` of a TFRecord file for TensorFlow: GZIP by its ``.gz`` suffix."""
    return "GZIP" if path.endswith(".gz") else ""


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def write_record(f: BinaryIO, record: bytes) -> None:
    """Appends one TFRecord to the open file ``f``."""
    length = struct.pack("<Q", len(record))
    f.write(length + _masked_crc(length) + record + _masked_crc(record))


def _open(path: str, compress: bool) -> BinaryIO:
    # mtime 0: the same records make the same bytes (reruns find the data unchanged)
    return gzip.GzipFile(path, "wb", mtime=0) if compress else open(path, "wb")


def write_splits(target: str, records: Iterable[tuple[str, bytes]], shards: int = 1,
                 name: str = "data", compress: bool = False) -> dict[str, int]:
    """Writes ``(split, serialized record)`` pairs round-robin into ``shards`` files per split,
    ``<target>/<split>/<name>-0000i-of-0000N.tfrecord[.gz]``; returns the records per split.

    The files go to a staging sibling renamed to ``target`` at the end (an empty ``target`` is
    replaced), so a crash or error leaves nothing half-written; raises ``FileExistsError`` if
    ``target`` is written by another process meanwhile. Folders get mode 0755 and files 0644
    (not ``mkdtemp``'s 0700): the pipeline's pods and other users read them.
    """
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
            writers[split] = [_open(
                os.path.join(staging, split, f"{name}-{i:05d}-of-{shards:05d}{suffix}"),
                compress) for i in range(shards)]
        for split, record in records:
            write_record(writers[split][counts[split] % shards], record)
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
