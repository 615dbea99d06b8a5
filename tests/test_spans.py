"""Fence: ``domain.spans`` (pure Python) resolves spans as TFX does. On each layout, its span,
fingerprint and range config must equal what TFX's ``FileBasedInputProcessor``
(``resolve_span_and_version``, ``get_input_fingerprint``) and ``proto_utils.proto_to_json``
give, and where TFX raises, it raises. A TFX that resolves otherwise fails here, by name."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from tfx.components.example_gen import input_processor
from tfx.proto import example_gen_pb2, range_config_pb2
from tfx.utils import proto_utils

from components.live_inputs import fileio_glob
from domain import spans

TFX = ("TFX's FileBasedInputProcessor.resolve_span_and_version / get_input_fingerprint "
       "(tfx.components.example_gen.utils.calculate_splits_fingerprint_span_and_version)")


def _file(path, size: int = 3, mtime: float = 1_700_000_000) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"x" * size)
    os.utime(path, ns=(int(mtime * 1e9), int(mtime * 1e9)))


def _tfx(root: str, patterns: dict[str, str], span: int) -> spans.Resolved:
    """What TFX resolves (as ``DataSpan`` did before ``domain.spans``)."""
    splits = [example_gen_pb2.Input.Split(name=n, pattern=p) for n, p in patterns.items()]
    pinned = range_config_pb2.RangeConfig(static_range=range_config_pb2.StaticRange(
        start_span_number=span, end_span_number=span)) if span else None
    processor = input_processor.FileBasedInputProcessor(root, splits, pinned)
    resolved, version = processor.resolve_span_and_version()
    fingerprint = processor.get_input_fingerprint(resolved, version)
    spanned = any(spans.SPAN_SPEC in p for p in patterns.values())
    return spans.Resolved(resolved, fingerprint, proto_utils.proto_to_json(
        range_config_pb2.RangeConfig(static_range=range_config_pb2.StaticRange(
            start_span_number=resolved, end_span_number=resolved))) if spanned else "")


def _outcome(resolve):
    try:
        return resolve()
    except ValueError:
        return ValueError


def _assert_as_tfx(root, spanned: bool, span: int = 0) -> spans.Resolved:
    patterns = spans.split_patterns(spanned)
    ours = _outcome(lambda: spans.resolve(str(root), patterns, span))
    theirs = _outcome(lambda: _tfx(str(root), patterns, span))
    assert ours == theirs, (f"domain.spans diverges from {TFX} on {root} (spans={spanned}, "
                            f"span={span}): domain.spans {ours!r}, TFX {theirs!r}")
    return ours


def _spans(root, *numbers, splits=("train", "eval")) -> None:
    for number in numbers:
        for index, split in enumerate(splits):
            _file(root / f"span-{number}" / split / "data", number + index,
                  1_700_000_000 + 13 * number + index)


def test_a_flat_layout_with_dot_files_folders_and_fractional_mtimes_is_tfxs(tmp_path):
    for index, (split, size) in enumerate([("train", 10), ("train", 7), ("eval", 3)]):
        _file(tmp_path / split / f"part-{index}.gz", size, 1_700_000_000.75 + 7 * index)
    _assert_as_tfx(tmp_path, False)
    _file(tmp_path / "train" / ".hidden", 5)
    _file(tmp_path / "eval" / "folder" / "file", 5)
    assert "num_files:2" in _assert_as_tfx(tmp_path, False).fingerprint.splitlines()[1]
    _assert_as_tfx(tmp_path / "missing", False)  # TFX: no files, no error


@pytest.mark.parametrize("span", [0, 2, 10, 3])
def test_the_latest_or_pinned_span_is_tfxs(tmp_path, span):
    _spans(tmp_path, 1, 2, 10)
    resolved = _assert_as_tfx(tmp_path, True, span)
    assert resolved is ValueError if span == 3 else resolved.span == (span or 10)


@pytest.mark.parametrize("written", ["{}/", "{}//./", "./{name}", "{name}"])
def test_a_data_root_is_read_as_written(tmp_path, monkeypatch, written):
    _spans(tmp_path, 1, 2)
    monkeypatch.chdir(tmp_path.parent)
    root = written.format(tmp_path, name=tmp_path.name).replace("/tmp/", "/tmp//", 1)
    assert _assert_as_tfx(root, True).span == 2


@pytest.mark.parametrize("odd", [
    "span-11/train/data",  # a span without eval yet: TFX refuses the latest
    "span-x/train/data",  # not a span number
    "span-7/train/.hidden",  # dot files count
    "span-12/train/sub/data",  # so do folders
])
def test_odd_span_layouts_are_read_as_tfx_reads_them(tmp_path, odd):
    _spans(tmp_path, 1, 10)
    _spans(tmp_path, 7, splits=("eval",))
    _file(tmp_path / odd)
    for span in (0, 7, 10):
        _assert_as_tfx(tmp_path, True, span)


def test_span_zero_has_tfxs_empty_range(tmp_path):
    _spans(tmp_path, 0)
    assert _assert_as_tfx(tmp_path, True).range_config == spans.range_config(0)


def test_two_folders_of_the_latest_span_are_refused(tmp_path):
    """TFX picks either, by its glob's order: ImportExampleGen might read the other."""
    _spans(tmp_path, 1)
    _file(tmp_path / "span-01" / "train" / "data")
    with pytest.raises(ValueError, match="span-1|both hold span 1"):
        spans.resolve(str(tmp_path), spans.split_patterns(True))


def test_tfxs_fileio_lists_as_local_glob_does(tmp_path):
    """``DataSpan`` lists URIs with TFX's ``fileio``: the same algorithm, the same result."""
    _spans(tmp_path, 1, 4)
    _file(tmp_path / "span-4" / "train" / ".hidden", 2, 1_700_000_000.5)
    for span in (0, 1):
        assert spans.resolve(str(tmp_path), spans.split_patterns(True), span, fileio_glob) == \
            spans.resolve(str(tmp_path), spans.split_patterns(True), span), \
            f"TFX's fileio.glob / fileio.stat list {tmp_path} otherwise than spans.local_glob"


def test_domain_spans_imports_no_tfx():
    probe = ("import sys, domain.spans; print(sorted(m for m in ('tfx', 'tensorflow', "
             "'apache_beam') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.stdout.strip() == "[]", done.stderr
