"""Before a local run: user mistakes found early and named in one line (``UserError``: data
root, files, feature keys, labels, serving dir, metadata db), and what makes a run safe to
start and to kill: one run at a time per metadata db, and nothing left ``RUNNING`` by a run
that was killed.

The lock is an ``flock`` on ``<metadata db>.lock``: the kernel releases it when its holder
dies, even by ``kill -9``, so a lock is never stale. A run that finds it held waits, and then
finds the other run's work in the cache; the pusher never pushes a model twice.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import sys
import time

from domain import files
from domain.records import compression
from pipeline.config import DASK_CONNECT_SECONDS, PipelineConfig


class UserError(Exception):
    """A mistake the user can fix: shown as one line, exit code 2."""


def is_user_error(err: BaseException) -> bool:
    """A failure the user fixes (bad options, data or state), told in words, not a traceback.
    (The components' error classes are imported only past a ``UserError``: a preflight
    answer needs no TensorFlow.)"""
    if isinstance(err, UserError):
        return True
    from components.anomaly_gate import DataAnomalyError
    from components.image_validator import BadImageError
    return isinstance(err, (DataAnomalyError, BadImageError))


@contextlib.contextmanager
def one_line_errors(config: PipelineConfig):
    """Turns a user's mistake into ``error: <message>`` on stderr and exit code 2 (with the
    traceback under ``--verbose``)."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - anything else is re-raised as it is
        if config.verbose or not is_user_error(err):
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


@contextlib.contextmanager
def run_lock(config: PipelineConfig, announce=lambda line: print(line, flush=True)):
    """Holds the run lock of ``config``'s metadata db; waits (saying so) while another run
    holds it."""
    path = config.metadata_path + ".lock"
    busy = lambda holder: announce(  # noqa: E731
        f"Another run holds the lock {path} ({holder}); waiting for it to end")
    with files.locked(path, on_busy=busy):
        files.note(path, f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        try:
            yield
        finally:
            files.note(path, "")


def check_dask_scheduler(config: PipelineConfig) -> None:
    """Raises ``UserError`` when ``--beam-mode dask`` names a scheduler that does not accept a
    connection: before the run, not in its first Beam component."""
    if config.beam_mode != "dask":
        return
    host, _, port = config.dask_address.partition("://")[2].rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), DASK_CONNECT_SECONDS).close()
    except OSError as err:
        raise UserError(f"--dask-address {config.dask_address}: no Dask scheduler answers "
                        f"({err.strerror or err})") from None


def check_metadata(config: PipelineConfig) -> None:
    """Raises ``UserError`` (how to recover, keeping the served models) unless the metadata
    db is absent or a sound SQLite file."""
    path = config.metadata_path
    if not os.path.exists(path):
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            result = db.execute("PRAGMA quick_check").fetchall()
        problem = "" if result == [("ok",)] else result[0][0].splitlines()[-1]
    except sqlite3.Error as err:
        problem = str(err)
    if problem:
        raise UserError(
            f"metadata db {path} is unreadable ({problem}). The served models in "
            f"{config.push_dir} are not affected. To recover, move the db and the artifacts "
            f"it describes aside (mv {path} {path}.broken; mv {config.pipeline_root} "
            f"{config.pipeline_root}.broken) and run again: the run starts a new history, "
            "trains again, and pushes only if it passes the gate against the served version.")


def check_serving_dir(config: PipelineConfig) -> None:
    """Raises ``UserError`` unless the serving dir exists writable or can be created."""
    path = config.serving_dir
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing) or "."
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--serving-dir {path}: {existing} is not a writable directory; give "
                        "a serving dir this user can write")


def abandon_interrupted(store) -> int:
    """Marks executions still ``RUNNING`` (their run was killed: we hold the lock) as
    ``CANCELED``; returns how many."""
    from ml_metadata.proto import metadata_store_pb2
    running = metadata_store_pb2.Execution.RUNNING
    stale = [e for e in store.get_executions() if e.last_known_state == running]
    for execution in stale:
        execution.last_known_state = metadata_store_pb2.Execution.CANCELED
        execution.custom_properties["interrupted"].string_value = (
            "its run ended without finishing it (killed?); a later run found it")
    if stale:
        store.put_executions(stale)
    return len(stale)


LABELS_SCANNED = 20_000  # records per split whose labels the preflight reads
FILES_OPENED = 100  # files per split whose first record is read (dot files sort first)


def check_teacher(config: PipelineConfig) -> None:
    """Raises ``UserError`` when ``--distill-teacher`` is neither a backbone nor a folder of
    this machine (a cluster's path is checked where it runs)."""
    from domain.features import BACKBONES
    teacher = config.distill_teacher
    if (teacher and teacher.partition(":")[0] not in BACKBONES and "://" not in teacher
            and not os.path.isdir(teacher)):
        raise UserError(f"--distill-teacher {teacher}: neither a backbone[:width] "
                        f"({', '.join(BACKBONES)}) nor a pushed version's directory")


def check_data(config: PipelineConfig) -> None:
    """Raises ``UserError`` for a missing data root, splits without TFRecord files (in the span
    the run will read), files that hold no tf.Examples, image or label keys that are not in the data (naming those that are),
    and int labels outside ``[0, num_classes)`` (among the first ``LABELS_SCANNED`` of each
    split; without ``schema_path``), and a class map that disagrees (``check_class_map``).
    Object-store data roots are left to the pipeline."""
    from domain import spans
    from domain.features import SPLITS
    root = config.data_root
    if "://" in root:
        return
    if not os.path.isdir(root):
        raise UserError(f"--data-root {root} is not a directory: give the folder that holds "
                        f"{'span-N/' if config.spans else ''}{{{','.join(SPLITS)}}}/ TFRecord "
                        "files (python -m ops.ingest makes them from image folders)")
    span = _span_folder(config)
    for split in SPLITS:
        pattern = os.path.join(root, span, split, "*")
        files = sorted(f.path for f in spans.local_glob(pattern) if not f.is_directory)
        if not files:
            present = ", ".join(sorted(os.listdir(root))[:10]) or "nothing"
            raise UserError(f"--data-root {root}: no files match {pattern} (the folder holds: "
                            f"{present}); each split needs TFRecord files of tf.Examples")
        _check_records(config, split, files)
    check_class_map(config)


def _span_folder(config: PipelineConfig) -> str:
    """The span folder the run will read (``--span``, else the highest span number, as
    ImportExampleGen resolves it), "" without spans."""
    if not config.spans:
        return ""
    from domain import spans
    try:
        resolved = spans.resolve(config.data_root, spans.split_patterns(True), config.span)
    except ValueError as err:
        raise UserError(f"--data-root{' --span %d' % config.span if config.span else ''}: "
                        f"{err}") from None
    return f"span-{resolved.span}"


def check_class_map(config: PipelineConfig) -> None:
    """Raises ``UserError`` naming the classes when the data's class map (``ops.ingest``'s
    ``classes.json``) disagrees with ``--num-classes``/``--class-names`` or with the classes
    of the served version (unless ``--allow-new-classes`` and it only adds classes)."""
    from domain import class_map, registry
    if "://" in config.data_root:
        return
    try:
        classes = class_map.read(config.data_root)
    except ValueError as err:
        raise UserError(str(err)) from None
    if classes is None:
        return
    if config.num_classes and len(classes) != config.num_classes or (config.class_names and
                                              list(config.class_names) != classes):
        raise UserError(f"{os.path.join(config.data_root, class_map.CLASS_MAP)} has "
                        f"{len(classes)} classes ({', '.join(classes)}) but the run is set for "
                        f"--num-classes {config.num_classes}"
                        + (f" --class-names {' '.join(config.class_names)}"
                           if config.class_names else "") + ": make them agree")
    served = registry.served_version(config.push_dir)
    entry = registry.manifest_entry(config.push_dir, served) or {}
    why = class_map.disagreement(classes, entry.get("class_names"), served,
                                 config.allow_new_classes)
    if why:
        raise UserError(f"--data-root {config.data_root}: {why}")


def _check_records(config: PipelineConfig, split: str, files: list[str]) -> None:
    import tensorflow as tf
    labels_seen = 0
    # With a curated schema, its label domain is the contract: ExampleValidator names every
    # anomaly of the data at once.
    # (Not before the number of classes is known: pipeline.data_shape.)
    scan_labels = (config.label_format == "int" and not config.schema_path
                   and config.num_classes > 0)
    for opened, path in enumerate(files):
        if opened >= FILES_OPENED and (labels_seen >= LABELS_SCANNED or not scan_labels):
            break
        try:
            for index, record in enumerate(tf.data.TFRecordDataset(
                    path, compression_type=compression(path)).as_numpy_iterator()):
                features = tf.train.Example.FromString(record).features.feature
                where = f"{path} record {index}"
                for option, key in (("--image-key", config.image_key),
                                    ("--label-key", config.label_key)):
                    if key not in features:
                        raise UserError(f"{option} {key!r} is not in the data: {where} has "
                                        f"the features {', '.join(sorted(features))}")
                if scan_labels:
                    for label in features[config.label_key].int64_list.value:
                        if not 0 <= label < config.num_classes:
                            raise UserError(
                                f"{where}: label {label} is outside [0, {config.num_classes}) "
                                f"(--num-classes {config.num_classes}); fix the labels or "
                                "raise --num-classes")
                labels_seen += 1
                if labels_seen >= LABELS_SCANNED or not scan_labels:
                    break
        except tf.errors.OpError as err:  # DataLossError among them
            raise UserError(f"{path} is not a readable TFRecord file ({err.message.strip()[:120]})"
                            "; each split needs TFRecord files of tf.Examples") from None
        except ValueError as err:  # DecodeError: records that are not tf.Examples
            raise UserError(f"{path}: its records are not tf.Examples ({err})") from None
    if not labels_seen:
        raise UserError(f"no records in the {split} split ({len(files)} files, the first "
                        f"{files[0]}); each split needs at least one example")
