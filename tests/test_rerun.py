"""The identical rerun's data fingerprint, computed without TensorFlow, is ``domain.spans``'s
(TFX's: tests/test_spans.py) on the layouts a run reads, and it declines (None: the normal path)
where TFX's glob might read otherwise. (The rerun itself, recorded in MLMD:
tests/test_pipeline_e2e.py.)"""
from __future__ import annotations

import os

import pytest

from domain import spans
from pipeline import rerun
from pipeline.config import PipelineConfig


def _file(path, size: int, mtime: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"x" * size)
    os.utime(path, (mtime, mtime))


def _config(root, *extra: str) -> PipelineConfig:
    return PipelineConfig.from_args(["--data-root", str(root), "--work-dir",
                                     str(root) + "-work", *extra], {})


def _tfx(config: PipelineConfig) -> str:
    return spans.resolve(config.data_root, spans.split_patterns(config.spans),
                         config.span).fingerprint


def test_the_fingerprint_of_a_flat_data_root_is_tfxs(tmp_path):
    for index, (split, size) in enumerate([("train", 10), ("train", 7), ("eval", 3)]):
        _file(tmp_path / split / f"part-{index}.tfrecord.gz", size, 1_700_000_000 + 7 * index)
    config = _config(tmp_path)
    assert rerun.span_fingerprint(config) == _tfx(config)
    os.utime(tmp_path / "eval" / "part-2.tfrecord.gz", (1_700_000_001, 1_700_000_001))
    assert rerun.span_fingerprint(config) == _tfx(config) != rerun.span_fingerprint(
        _config(tmp_path / "nothing"))


def test_the_latest_or_pinned_span_is_tfxs(tmp_path):
    for span, mtime in ((1, 1_700_000_000), (2, 1_700_000_100), (10, 1_700_000_200)):
        for split in ("train", "eval"):
            _file(tmp_path / f"span-{span}" / split / "data.tfrecord", span, mtime + span)
    _file(tmp_path / "span-11" / "train" / "data.tfrecord", 1, 1)  # no eval: not a span yet
    latest = _config(tmp_path, "--spans", "true")
    with pytest.raises(ValueError):
        _tfx(latest)  # TFX: the latest span must be the same for every split
    assert rerun.span_fingerprint(latest) is None
    os.remove(tmp_path / "span-11" / "train" / "data.tfrecord")
    os.rmdir(tmp_path / "span-11" / "train")
    assert rerun.span_fingerprint(latest) == _tfx(latest)
    assert "total_bytes:10," in rerun.span_fingerprint(latest)  # span 10, not span 2
    pinned = _config(tmp_path, "--spans", "true", "--span", "2")
    assert rerun.span_fingerprint(pinned) == _tfx(pinned) != rerun.span_fingerprint(latest)
    assert rerun.span_fingerprint(_config(tmp_path, "--spans", "true", "--span", "3")) is None


@pytest.mark.parametrize("odd", ["train/.hidden", "train/folder/file", "span-x/train/file"])
def test_layouts_tfx_might_read_otherwise_take_the_normal_path(tmp_path, odd):
    spans = odd.startswith("span-")
    prefix = "span-1/" if spans else ""
    for split in ("train", "eval"):
        _file(tmp_path / f"{prefix}{split}" / "data", 5, 1_700_000_000)
    _file(tmp_path / odd, 1, 1_700_000_000)
    assert rerun.span_fingerprint(_config(tmp_path, "--spans", str(spans).lower())) is None


def test_any_write_to_a_data_file_changes_the_identity_even_where_tfx_sees_none(tmp_path):
    """Same size, mtime set back: TFX's fingerprint is unchanged, the file's ctime is not."""
    for split in ("train", "eval"):
        _file(tmp_path / split / "data", 5, 1_700_000_000)
    config = _config(tmp_path)
    before = (rerun.identity(config), _tfx(config))
    with open(tmp_path / "train" / "data", "r+b") as f:
        f.write(b"y")
    os.utime(tmp_path / "train" / "data", (1_700_000_000, 1_700_000_000))
    after = rerun.identity(config)
    assert _tfx(config) == before[1] == after.data_fingerprint
    assert after.key != before[0].key
