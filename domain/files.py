"""Files that several processes share: one lock and one durable, atomic write.

The lock is an ``flock``: the kernel drops it when its holder dies, even by ``kill -9``, so a
lock is never stale. It is re-entrant within a process (a holder may call a function that
takes it again) and excludes this process's other threads too.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
from typing import Callable, Iterator

_HELD: dict[str, list] = {}  # lock path -> [open file, depth, owning thread]
_GUARD = threading.Lock()
_THREADS: dict[str, threading.Lock] = {}  # lock path -> this process's lock of its threads


def _thread_lock(path: str) -> threading.Lock:
    with _GUARD:
        return _THREADS.setdefault(path, threading.Lock())


@contextlib.contextmanager
def locked(path: str, on_busy: Callable[[str], None] | None = None) -> Iterator[None]:
    """Holds the exclusive lock of the file ``path`` (created if missing). ``on_busy`` is
    called with the holder's note (``note``) before waiting, when another process holds it."""
    path = os.path.realpath(path)
    held = _HELD.get(path)
    if held is not None and held[2] == threading.get_ident():
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _thread_lock(path), open(path, "a+") as lock:
        _acquire(lock, on_busy)
        _HELD[path] = [lock, 1, threading.get_ident()]
        try:
            yield
        finally:
            del _HELD[path]
            fcntl.flock(lock, fcntl.LOCK_UN)


def _acquire(lock, on_busy: Callable[[str], None] | None) -> None:
    if on_busy is None:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        on_busy(lock.read().strip() or "another process")
        fcntl.flock(lock, fcntl.LOCK_EX)


def note(path: str, text: str) -> None:
    """Writes who holds the lock ``path`` into it (call while holding it)."""
    held = _HELD[os.path.realpath(path)][0]
    held.seek(0)
    held.truncate()
    held.write(text)
    held.flush()


def fsync_dir(path: str) -> None:
    """Makes a folder's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str) -> None:
    """Makes every file and folder under ``root`` durable."""
    for folder, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


def write_atomically(path: str, data: str | bytes, mode: int = 0o644,
                     prefix: str = ".staging-") -> None:
    """Replaces the file ``path`` whole and durably: a reader or a crash sees the old content
    or the new, never a mix. The temporary file (``prefix``) sits beside it."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=folder)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)  # other users (TF Serving, monitoring, pods) may read it
    os.replace(tmp, path)
    fsync_dir(folder)


def read_json(path: str, default=None):
    """The JSON in ``path``; ``default`` when it is missing or torn (a crash before fsync)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return default


def read_text(path: str) -> str | None:
    """The text of ``path`` (None: missing)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None
