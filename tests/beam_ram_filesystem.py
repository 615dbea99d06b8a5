"""TensorFlow's in-memory ``ram://`` filesystem, registered with Beam too.

A store that is no POSIX path for TensorFlow, TFX and Beam alike, like ``gs://``: a run
whose pipeline root is ``ram://`` fails wherever code opens an artifact URI with Python's
``open()`` or ``os``. Beam finds a filesystem by subclass (importing this module registers
it); everything is delegated to ``tf.io.gfile``. One process only: ``ram://`` lives in its
memory. Importing this module also mends two faults of TensorFlow's ``ram://`` that GCS does
not have: a folder's rename moves only its entry, not the files under it (TensorFlow
Transform renames folders), and a listing of ``d`` names ``.extra`` for ``d.extra/``
(every SavedModel has ``assets/`` beside ``assets.extra/``).
"""
from __future__ import annotations

import io

import tensorflow as tf
from tensorflow.python.lib.io import _pywrap_file_io
from apache_beam.io.filesystem import (BeamIOError, CompressedFile, CompressionTypes,
                                       FileMetadata, FileSystem)


_rename_file = _pywrap_file_io.RenameFile


def _rename_like_gcs(old: bytes, new: bytes, overwrite: bool) -> None:
    """A ``ram://`` folder's rename moves the files under it, as on GCS."""
    source, target = old.decode(), new.decode()
    if not (source.startswith("ram://") and tf.io.gfile.isdir(source)):
        return _rename_file(old, new, overwrite)
    for directory, _, files in tf.io.gfile.walk(source):
        destination = target + directory[len(source):]
        tf.io.gfile.makedirs(destination)
        for name in files:
            _rename_file(f"{directory}/{name}".encode(), f"{destination}/{name}".encode(),
                         overwrite)
    tf.io.gfile.rmtree(source)


_get_children = _pywrap_file_io.GetChildren


def _children(path: bytes) -> list[str]:
    """A ``ram://`` folder's children that exist (not those of a longer name's folder)."""
    children = _get_children(path)
    if not path.decode().startswith("ram://"):
        return children
    return [c for c in children if tf.io.gfile.exists(f"{path.decode().rstrip('/')}/{c}")]


_pywrap_file_io.RenameFile = _rename_like_gcs
_pywrap_file_io.GetChildren = _children


class _Writer(io.RawIOBase):
    """A GFile for writing that tells its position (ram:// files cannot)."""
    mode = "wb"

    def __init__(self, path: str):
        super().__init__()
        self._file, self._position = tf.io.gfile.GFile(path, "wb"), 0

    def writable(self):
        return True

    def write(self, data):
        self._file.write(bytes(data))
        self._position += len(data)
        return len(data)

    def tell(self):
        return self._position

    def flush(self):
        self._file.flush()

    def close(self):
        if not self.closed:
            self._file.close()
        super().close()


class RamFileSystem(FileSystem):
    """Beam's view of ``ram://``, through ``tf.io.gfile``."""

    @classmethod
    def scheme(cls):
        return "ram"

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/")] + [p.strip("/") for p in paths])

    def split(self, path):
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path):
        tf.io.gfile.makedirs(path)

    def has_dirs(self):
        return True

    def _list(self, dir_or_prefix):
        if not tf.io.gfile.exists(dir_or_prefix):
            return
        for directory, _, files in tf.io.gfile.walk(dir_or_prefix):
            for name in files:
                path = self.join(directory, name)
                yield FileMetadata(path, tf.io.gfile.stat(path).length)

    def _open(self, path, mode, compression_type):
        raw = tf.io.gfile.GFile(path, mode) if mode == "rb" else _Writer(path)
        compression_type = self._get_compression_type(path, compression_type)
        return raw if compression_type == CompressionTypes.UNCOMPRESSED else \
            CompressedFile(raw, compression_type=compression_type)

    def create(self, path, mime_type="application/octet-stream",
               compression_type=CompressionTypes.AUTO):
        tf.io.gfile.makedirs(self.split(path)[0])
        return self._open(path, "wb", compression_type)

    def open(self, path, mime_type="application/octet-stream",
             compression_type=CompressionTypes.AUTO):
        return self._open(path, "rb", compression_type)

    def _each(self, operation, message, sources, destinations):
        failed = {}
        for source, destination in zip(sources, destinations):
            try:
                operation(source, destination)
            except Exception as err:  # pylint: disable=broad-except
                failed[(source, destination)] = err
        if failed:
            raise BeamIOError(message, failed)

    def copy(self, source_file_names, destination_file_names):
        self._each(lambda s, d: tf.io.gfile.copy(s, d, overwrite=True), "Copy failed",
                   source_file_names, destination_file_names)

    def rename(self, source_file_names, destination_file_names):
        self._each(lambda s, d: tf.io.gfile.rename(s, d, overwrite=True), "Rename failed",
                   source_file_names, destination_file_names)

    def exists(self, path):
        return tf.io.gfile.exists(path)

    def size(self, path):
        return tf.io.gfile.stat(path).length

    def last_updated(self, path):
        return tf.io.gfile.stat(path).mtime_nsec / 1e9

    def checksum(self, path):
        return str(self.size(path))

    def metadata(self, path):
        stat = tf.io.gfile.stat(path)
        return FileMetadata(path, stat.length, stat.mtime_nsec / 1e9)

    def delete(self, paths):
        failed = {}
        for path in paths:
            try:
                if tf.io.gfile.isdir(path):
                    tf.io.gfile.rmtree(path)
                else:
                    tf.io.gfile.remove(path)
            except Exception as err:  # pylint: disable=broad-except
                failed[path] = err
        if failed:
            raise BeamIOError("Delete failed", failed)
