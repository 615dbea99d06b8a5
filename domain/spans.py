"""Which data span a run reads, TFX's fingerprint of its files and the range config that pins
it: ImportExampleGen's span resolution (TFX's ``FileBasedInputProcessor``) in pure Python.

One algorithm for every caller: the ``DataSpan`` component, the preflight, the local runner
and the identical-rerun check. What differs is the listing (``Glob``: TFX's ``fileio.glob``
and ``fileio.stat``): ``local_glob`` reads a local filesystem as TensorFlow's glob does;
``DataSpan`` passes one that reaches object stores. The supported patterns are the project's
(``[span-{SPAN}/]<split>/*``: a ``{SPAN}`` spec without width, no version or date specs).
tests/test_spans.py compares the result with TFX's on several layouts.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
from typing import Callable, NamedTuple

from domain.features import SPLITS

SPAN_SPEC = "{SPAN}"
UNSUPPORTED_SPECS = ("{SPAN:", "{VERSION", "{YYYY}", "{MM}", "{DD}")
NANO_PER_SEC = 1000 * 1000 * 1000
MAX_SPAN = 2 ** 31 - 1  # RangeConfig's span numbers are int32
GLOB_CHARACTERS = set("*?[]{}()+^$|\\")  # in a data root, TFX's glob and regex read them


class FileStat(NamedTuple):
    """A matched path and what TFX's fingerprint reads of it (TensorFlow's FileStatistics)."""
    path: str
    length: int
    mtime_nsec: int
    is_directory: bool


Glob = Callable[[str], list[FileStat]]


class UncertainLayout(ValueError):
    """A layout ``certain_glob`` declines: TFX might read it otherwise."""


@dataclasses.dataclass(frozen=True)
class Resolved:
    """The span read (0 without ``{SPAN}``), TFX's fingerprint of its files and the range
    config JSON that pins it ("" without ``{SPAN}``)."""
    span: int
    fingerprint: str
    range_config: str


def split_patterns(spans: bool) -> dict[str, str]:
    """ImportExampleGen's split patterns: ``[span-{SPAN}/]<split>/*``."""
    prefix = f"span-{SPAN_SPEC}/" if spans else ""
    return {split: f"{prefix}{split}/*" for split in SPLITS}


def patterns_of(input_config: str) -> dict[str, str]:
    """The split patterns of ImportExampleGen's input config (``example_gen_pb2.Input``, JSON)."""
    return {split["name"]: split["pattern"] for split in json.loads(input_config)["splits"]}


def range_config(span: int) -> str:
    """The JSON of a ``RangeConfig`` pinning ``span``, as TFX's ``proto_utils.proto_to_json``
    writes it (proto3 omits zeros)."""
    if not 0 <= span <= MAX_SPAN:
        raise ValueError(f"span {span} is outside RangeConfig's [0, {MAX_SPAN}]")
    pinned = {"end_span_number": span, "start_span_number": span} if span else {}
    return json.dumps({"static_range": pinned}, indent=2, sort_keys=True)


def resolve(data_root: str, patterns: dict[str, str], span: int = 0,
            glob: Glob | None = None) -> Resolved:
    """The span ``patterns`` resolve to under ``data_root`` (``span``, or the latest when 0),
    its fingerprint and range config, as TFX's ``calculate_splits_fingerprint_span_and_version``
    computes them. Raises ``ValueError`` naming the data root (and TFX's wording) when a span
    or its files are missing, and when two folders hold the latest span (``span-1``,
    ``span-01``: TFX picks either)."""
    try:
        return _resolve(data_root, patterns, span, glob or local_glob)
    except ValueError as err:
        raise type(err)(f"data root {data_root}: {err}") from None


def _resolve(data_root: str, patterns: dict[str, str], span: int, glob: Glob) -> Resolved:
    spanned = _spanned(patterns, span)
    fingerprints, selected = [], 0
    for split, pattern in patterns.items():
        target, token = _target_span(data_root, split, pattern, span, glob) if spanned \
            else (0, "")
        selected = selected or target  # TFX keeps the first split's span unless it is 0
        if target != selected:
            raise ValueError("Latest span should be the same for each split")
        fingerprints.append(_fingerprint(
            split, glob(os.path.join(data_root, pattern.replace(SPAN_SPEC, token)))))
    return Resolved(selected, "\n".join(fingerprints),
                    range_config(selected) if spanned else "")


def _spanned(patterns: dict[str, str], span: int) -> bool:
    """Whether the patterns hold ``{SPAN}`` (all or none, as TFX requires)."""
    for pattern in patterns.values():
        if any(spec in pattern for spec in UNSUPPORTED_SPECS) or pattern.count(SPAN_SPEC) > 1:
            raise ValueError(f"{pattern}: domain.spans reads a single {SPAN_SPEC} spec only")
    spanned = {SPAN_SPEC in pattern for pattern in patterns.values()}
    if len(spanned) > 1:
        raise ValueError(f"Spec setup should the same for all splits: {patterns}.")
    if span and spanned != {True}:
        raise ValueError("Span or Date spec should be specified in split pattern if "
                         "RangeConfig is specified.")
    return spanned == {True}


def _glob_to_regex(pattern: str) -> str:
    """TFX's ``example_gen.utils._glob_to_regex``."""
    for old, new in (("\\", "\\\\"), (".", r"\."), ("+", r"\+"), ("*", r"[^\\/]*"),
                     ("?", r"[^\\/]"), ("(", r"\("), (")", r"\)")):
        pattern = pattern.replace(old, new)
    return pattern


def _target_span(data_root: str, split: str, pattern: str, span: int,
                 glob: Glob) -> tuple[int, str]:
    """The span ``pattern`` matches (``span``, else the highest) and its folder's token."""
    full = os.path.join(data_root, pattern)
    token = str(span) if span else "*"
    regex = _glob_to_regex(full).replace(SPAN_SPEC, f"(?P<span>{token if span else '.*'})")
    found: dict[str, int] = {}
    for match in glob(full.replace(SPAN_SPEC, token)):
        result = re.search(regex, match.path)
        if result is None:
            raise ValueError("Glob pattern does not match regex pattern")
        try:
            found[result.group("span")] = int(result.group("span"))
        except ValueError:
            raise ValueError(f"Cannot find span number from {match.path} based on "
                             f"{regex}") from None
    if not found:
        raise ValueError(f"Cannot find matching for split {split} based on {pattern}")
    latest = max(found.values())
    tokens = sorted(t for t, number in found.items() if number == latest)
    if len(tokens) > 1:
        raise ValueError(f"split {split}: "
                         f"{' and '.join(pattern.replace(SPAN_SPEC, t) for t in tokens)} both "
                         f"hold span {latest}; keep one")
    return latest, tokens[0]


def _fingerprint(split: str, files: list[FileStat]) -> str:
    """TFX's ``io_utils.generate_fingerprint`` of the files matched."""
    seconds = [int(f.mtime_nsec / NANO_PER_SEC) for f in files]
    xor = 0
    for second in seconds:
        xor ^= second
    return (f"split:{split},num_files:{len(files)},"
            f"total_bytes:{sum(f.length for f in files)},"
            f"xor_checksum:{xor},sum_checksum:{sum(seconds)}")


def local_glob(pattern: str) -> list[FileStat]:
    """TensorFlow's glob and stat of a local ``pattern``: ``*``, ``?`` and ``[...]`` match
    within one path component, dot files included; folders expand only where a component
    follows; paths as the pattern writes them; modification times in whole seconds
    (TensorFlow's local stat)."""
    head, *parts = pattern.split(os.sep)
    paths = [head]  # matched as written (``a//b``, ``./a``), as TensorFlow returns them
    for part in parts:
        paths = [f"{path}{os.sep}{name}" for path in paths if os.path.isdir(path or os.sep)
                 for name in _children(path or os.sep, part)]
    return [_stat(path) for path in paths]


def _children(folder: str, part: str) -> list[str]:
    if not any(c in part for c in "*?["):
        return [part] if os.path.lexists(os.path.join(folder, part)) else []
    try:
        return [name for name in os.listdir(folder) if fnmatch.fnmatchcase(name, part)]
    except OSError:
        return []


def _stat(path: str) -> FileStat:
    try:
        stat = os.stat(path)
    except OSError as err:
        raise ValueError(f"{path}: {err.strerror}") from None
    return FileStat(path, stat.st_size, stat.st_mtime_ns // NANO_PER_SEC * NANO_PER_SEC,
                    os.path.isdir(path))


def certain_glob(pattern: str) -> list[FileStat]:
    """``local_glob``, raising ``UncertainLayout`` for matches TFX's glob might read otherwise
    or ImportExampleGen not at all: none, dot files, folders."""
    files = local_glob(pattern)
    if not files or any(f.is_directory or os.path.basename(f.path).startswith(".")
                        for f in files):
        raise UncertainLayout(f"{pattern}: no files, dot files or folders")
    return files


def certain_fingerprint(data_root: str, patterns: dict[str, str], span: int) -> str | None:
    """``resolve``'s fingerprint where it is certainly TFX's; None for an object store, a data
    root with glob or regex characters, a missing span or an ``UncertainLayout``."""
    if "://" in data_root or GLOB_CHARACTERS & set(data_root):
        return None
    try:
        return resolve(data_root, patterns, span, certain_glob).fingerprint
    except ValueError:
        return None
