"""``ops.ingest``'s Beam pipeline, on any runner (the DirectRunner, Dask, Dataflow).

The files, in chunks, are reshuffled over the workers and checked (``ops.ingest.check_file``:
Pillow decodes each). Only what is known of each file (``Checked`` without its bytes) is
grouped, by sha256: the first file of a content in file order is kept, the others are
duplicates, or a conflict when their classes differ. The kept images are grouped by shard
(split and shard both from the content hash) and each shard file is written by one task, its
records in sha256 order, re-reading the image bytes from the file (checked against the hash):
no image bytes go through a shuffle, so the runner's memory holds metadata only. One
``Summary`` of every file (counts, skips, conflicts, sizes) is written beside the shards as
``SUMMARY``, for the client to judge and turn into the manifest.

Workers need the image folder and the output folder at the same paths (one machine, or a
shared file system).
"""
from __future__ import annotations

import collections
import json
import os
from dataclasses import dataclass, field

import apache_beam as beam

from domain.features import SPLITS
from domain.records import open_shard, shard_name, write_record
from ops import ingest as ops_ingest

SUMMARY = ".summary.json"  # in the staging folder; read and removed by the client


def shard_of(sha256: str, shards: int) -> int:
    """The shard of a content (hash digits apart from the split's ``split_of`` reads)."""
    return int(sha256[8:16], 16) % shards


@dataclass
class Summary:
    """Every file's outcome, combined: what the manifest and the client's checks need."""
    counts: collections.Counter = field(default_factory=collections.Counter)  # (split, class)
    skipped: list = field(default_factory=list)       # (file index, path, reason)
    conflicts: list = field(default_factory=list)     # (file index, message)
    shapes: collections.Counter = field(default_factory=collections.Counter)  # (h, w, colour)

    def as_json(self) -> dict:
        return {"counts": [[*key, n] for key, n in sorted(self.counts.items())],
                "skipped": sorted(self.skipped), "conflicts": sorted(self.conflicts),
                "shapes": [[*key, n] for key, n in sorted(self.shapes.items())]}


class Combine(beam.CombineFn):
    """Outcomes (``("kept", split, Checked)``, ``("skipped", ...)``, ``("conflict", ...)``)
    into one ``Summary``."""

    def create_accumulator(self) -> Summary:
        return Summary()

    def add_input(self, summary: Summary, outcome) -> Summary:
        kind, *rest = outcome
        if kind == "kept":
            split, item = rest
            summary.counts[split, item.label_name] += 1
            summary.shapes[item.height, item.width, item.colour] += 1
        else:
            (summary.skipped if kind == "skipped" else summary.conflicts).append(tuple(rest))
        return summary

    def merge_accumulators(self, summaries) -> Summary:
        merged = Summary()
        for summary in summaries:
            merged.counts.update(summary.counts)
            merged.shapes.update(summary.shapes)
            merged.skipped += summary.skipped
            merged.conflicts += summary.conflicts
        return merged

    def extract_output(self, summary: Summary) -> dict:
        return summary.as_json()


def _check(chunk: list, root: str, max_pixels: int):
    """``(sha256, (file index, Checked without its bytes))`` of each file of a chunk."""
    for index, path, label_name in chunk:
        item = ops_ingest.check_file(root, path, label_name, max_pixels)
        item.data = b""
        yield item.sha256, (index, item)


def _resolve(group, eval_fraction: float):
    """The outcomes of the files of one content: the first one (in file order) of those not
    skipped is kept, the next ones of its class are duplicates, of another a conflict."""
    _, items = group
    first = None
    for index, item in sorted(items, key=lambda pair: pair[0]):
        if item.skipped:
            yield "skipped", index, item.path, item.skipped
        elif first is None:
            first = item
            yield "kept", ops_ingest.split_of(item.sha256, eval_fraction), item
        elif item.label_name != first.label_name:
            yield "conflict", index, (f"the same image is labelled '{first.label_name}' "
                                      f"({first.path}) and '{item.label_name}' ({item.path})")
        else:
            yield "skipped", index, item.path, f"duplicate of {first.path}"


def _keyed_by_shard(outcome, shards: int):
    """A kept image as ``((split, shard), Checked)``; nothing of the other outcomes."""
    if outcome[0] == "kept":
        _, split, item = outcome
        yield (split, shard_of(item.sha256, shards)), item


class WriteShard(beam.DoFn):
    """One shard file of ``(split, shard), [Checked]``: its records in sha256 order, each
    image's bytes read again from its file."""

    def __init__(self, image_dir: str, staging: str, labels: dict, shards: int,
                 compress: bool):
        self.image_dir, self.staging, self.labels = image_dir, staging, labels
        self.shards, self.compress = shards, compress

    def process(self, element):
        (split, shard), items = element
        path = os.path.join(self.staging, split,
                            shard_name("data", shard, self.shards, self.compress))
        with open_shard(path, self.compress) as out:
            for item in sorted((item for item in items if item is not None),
                               key=lambda item: item.sha256):
                item.data = ops_ingest.image_bytes(self.image_dir, item)
                write_record(out, ops_ingest.example(item, self.labels[item.label_name]))
        yield split, shard


def _write_summary(summary: dict, staging: str) -> None:
    with open(os.path.join(staging, SUMMARY), "w", encoding="utf-8") as f:
        json.dump(summary, f)


def build(pipeline, jobs: list, image_dir: str, staging: str, labels: dict, shards: int,
          compress: bool, eval_fraction: float, max_pixels: int) -> None:
    """The ingest of ``jobs`` (``(file index, path, class name)``) into ``staging``."""
    chunks = [jobs[start:start + ops_ingest.CHUNK]
              for start in range(0, len(jobs), ops_ingest.CHUNK)]
    outcomes = (pipeline
                | "Files" >> beam.Create(chunks)
                | "Spread" >> beam.Reshuffle()
                | "Check" >> beam.FlatMap(_check, image_dir, max_pixels)
                | "BySha256" >> beam.GroupByKey()
                | "Resolve" >> beam.FlatMap(_resolve, eval_fraction))
    every_shard = pipeline | "Shards" >> beam.Create(
        [((split, shard), None) for split in SPLITS for shard in range(shards)])
    kept = outcomes | "Kept" >> beam.FlatMap(_keyed_by_shard, shards)
    _ = ((kept, every_shard) | "AllShards" >> beam.Flatten()
         | "ByShard" >> beam.GroupByKey()
         | "Write" >> beam.ParDo(WriteShard(image_dir, staging, labels, shards, compress)))
    _ = (outcomes | "Summarize" >> beam.CombineGlobally(Combine())
         | "WriteSummary" >> beam.Map(_write_summary, staging))
