"""What the project writes for other processes is readable by other users whatever the umask:
TFRecord splits (the pipeline's pods) and served versions (TF Serving): folders 0755, files
0644. Working files (logs, reports, metadata) follow the user's umask."""
from __future__ import annotations

import contextlib
import os
import stat

from domain import registry
from domain.records import write_splits


@contextlib.contextmanager
def _strict_umask():
    old = os.umask(0o077)  # the strictest a user might run with; mkdtemp is 0700 anyway
    try:
        yield
    finally:
        os.umask(old)


def _modes(top) -> dict[str, int]:
    return {path.relative_to(top.parent).as_posix(): stat.S_IMODE(path.stat().st_mode)
            for path in [top, *top.rglob("*")]}


def test_written_splits_are_readable_by_others_whatever_the_umask(tmp_path):
    target = tmp_path / "data"
    with _strict_umask():
        counts = write_splits(str(target), [("train", b"a"), ("eval", b"b"), ("train", b"c")],
                              shards=2, compress=True)
    assert counts == {"train": 2, "eval": 1}
    assert _modes(target) == {"data": 0o755, "data/train": 0o755, "data/eval": 0o755,
                     "data/train/data-00000-of-00002.tfrecord.gz": 0o644,
                     "data/train/data-00001-of-00002.tfrecord.gz": 0o644,
                     "data/eval/data-00000-of-00002.tfrecord.gz": 0o644,
                     "data/eval/data-00001-of-00002.tfrecord.gz": 0o644}
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no staging left


def test_a_published_version_is_readable_by_others_whatever_the_umask(tmp_path):
    source = tmp_path / "model"
    with _strict_umask():
        (source / "variables").mkdir(parents=True)
        (source / "saved_model.pb").write_bytes(b"graph")
        (source / "variables" / "variables.index").write_bytes(b"index")
        version = registry.publish(str(source), str(tmp_path / "serving" / "m"), {}, keep=2)
    assert _modes(tmp_path / "serving" / "m" / str(version)) == {
        "1": 0o755, "1/saved_model.pb": 0o644, "1/variables": 0o755,
        "1/variables/variables.index": 0o644, "1/assets.extra": 0o755,
        "1/assets.extra/push.json": 0o644}
