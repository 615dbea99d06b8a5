"""TFRecord files: sharded splits written all or nothing (the embedded data, ingest,
generators), their compression by name, and their records read back. Written and read in
TFRecord's own framing (length, masked CRC-32C of the length, data, masked CRC-32C of the
data), so no TensorFlow is imported."""
from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import struct
import tempfile
from typing import BinaryIO, Iterable, Iterator

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


def read_records(f: BinaryIO, name: str = "") -> Iterator[bytes]:
    """The records of an open TFRecord file ``name`` (its framing: length, CRC of it, data,
    CRC; the CRCs are checked by the readers downstream)."""
    while header := f.read(12):
        length, = struct.unpack("<Q", header[:8].ljust(8, b"\0"))
        record = f.read(length + 4)
        if len(header) < 12 or len(record) < length + 4:
            raise ValueError(f"{name}: truncated TFRecord file")
        yield record[:length]


def open_shard(path: str, compress: bool) -> BinaryIO:
    """A TFRecord file opened for writing, GZIP when ``compress``."""
    # mtime 0: the same records make the same bytes (reruns find the data unchanged)
    return gzip.GzipFile(path, "wb", mtime=0) if compress else open(path, "wb")


def shard_name(name: str, shard: int, shards: int, compress: bool) -> str:
    """``<name>-0000i-of-0000N.tfrecord[.gz]``: the file ImportExampleGen reads as ``<name>-*``."""
    return f"{name}-{shard:05d}-of-{shards:05d}.tfrecord" + (".gz" if compress else "")


@contextlib.contextmanager
def staged(target: str, name: str = "data") -> Iterator[str]:
    """Yields a staging sibling of ``target`` with a folder per split, renamed to ``target``
    when the block ends (an empty ``target`` is replaced) and removed if it raises, so a crash
    or error leaves nothing half-written; raises ``FileExistsError`` if ``target`` is written
    by another process meanwhile. Folders get mode 0755 and files 0644 (not ``mkdtemp``'s
    0700): the pipeline's pods and other users read them."""
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}-", dir=parent)
    try:
        for folder in [staging] + [os.path.join(staging, split) for split in SPLITS]:
            os.makedirs(folder, exist_ok=True)
            os.chmod(folder, READABLE_DIR)  # whatever the umask
        yield staging
        for folder, _, files in os.walk(staging):
            for file in files:
                os.chmod(os.path.join(folder, file), READABLE_FILE)
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


def write_splits(target: str, records: Iterable[tuple[str, bytes]], shards: int = 1,
                 name: str = "data", compress: bool = False) -> dict[str, int]:
    """Writes ``(split, serialized record)`` pairs round-robin into ``shards`` files per split,
    ``<target>/<split>/<name>-0000i-of-0000N.tfrecord[.gz]``, all or nothing (``staged``);
    returns the records per split."""
    counts = dict.fromkeys(SPLITS, 0)
    with staged(target, name) as staging:
        writers = {split: [open_shard(os.path.join(staging, split,
                                                   shard_name(name, i, shards, compress)),
                                      compress) for i in range(shards)] for split in SPLITS}
        try:
            for split, record in records:
                write_record(writers[split][counts[split] % shards], record)
                counts[split] += 1
        finally:
            for split_writers in writers.values():
                for writer in split_writers:
                    writer.close()
    return counts
