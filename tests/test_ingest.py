"""The folder-to-TFRecords converter on a messy generated image tree."""
from __future__ import annotations

import glob
import hashlib
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from ops import ingest, ingest_beam
from tests.conftest import encode


def _save(path, data: bytes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _tree(root, rng):
    """cats: 6 good (JPEG/PNG/GIF-named-.jpg, gray/RGB/RGBA, sizes) + truncated JPEG + text;
    dogs: 5 good + one duplicate inside the class; a CMYK JPEG and a 16-bit PNG re-encoded."""
    from PIL import Image
    img = lambda shape: rng.integers(0, 256, shape, dtype=np.uint8)  # noqa: E731
    _save(f"{root}/cats/a.jpg", encode(img((30, 40, 3)), "JPEG"))
    _save(f"{root}/cats/b.png", encode(img((12, 12)), "PNG"))
    _save(f"{root}/cats/c.png", encode(img((20, 10, 4)), "PNG"))
    _save(f"{root}/cats/gif-really.jpg", encode(img((16, 16)), "GIF"))
    _save(f"{root}/cats/sub/d.jpeg", encode(img((64, 48)), "JPEG"))
    buffer = __import__("io").BytesIO()
    Image.fromarray(img((9, 9, 4)), "CMYK").save(buffer, format="JPEG")
    _save(f"{root}/cats/cmyk.jpg", buffer.getvalue())
    _save(f"{root}/cats/truncated.jpg", encode(img((50, 50, 3)), "JPEG")[:300])
    _save(f"{root}/cats/notes.txt", b"these are cats\n")
    for i in range(4):
        _save(f"{root}/dogs/{i}.png", encode(img((10 + i, 8, 3)), "PNG"))
    buffer = __import__("io").BytesIO()
    Image.fromarray((img((8, 8)).astype(np.uint16) * 257)).save(buffer, format="PNG")
    _save(f"{root}/dogs/deep.png", buffer.getvalue())
    with open(f"{root}/dogs/0.png", "rb") as f:
        _save(f"{root}/dogs/copy-of-0.png", f.read())


def _records(root, split):
    files = sorted(glob.glob(os.path.join(root, split, "*")))
    return [tf.train.Example.FromString(r.numpy()) for r in
            tf.data.TFRecordDataset(files, compression_type="GZIP")]


def test_messy_tree_converts_with_exact_counts_and_reasons(tmp_path):
    _tree(str(tmp_path / "images"), np.random.default_rng(0))
    manifest = ingest.ingest(str(tmp_path / "images"), str(tmp_path / "out"), shards=2,
                             compress=True, span=7, eval_fraction=0.3,
                             max_skipped_fraction=0.3, progress=False)
    assert manifest["root"] == str(tmp_path / "out" / "span-7")
    assert manifest["classes"] == ["cats", "dogs"] and manifest["files"] == 14
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"cats/truncated.jpg", "cats/notes.txt", "dogs/copy-of-0.png"}
    assert reasons["cats/notes.txt"] == "not an image"
    assert reasons["cats/truncated.jpg"].startswith("corrupt")
    assert reasons["dogs/copy-of-0.png"] == "duplicate of dogs/0.png"
    counts = manifest["counts"]
    assert {c: counts["train"][c] + counts["eval"][c] for c in ("cats", "dogs")} == {
        "cats": 6, "dogs": 5}
    with open(tmp_path / "out" / "span-7" / "manifest.json") as f:
        assert json.load(f)["counts"] == counts
    decoded = 0
    for split in ("train", "eval"):
        records = _records(manifest["root"], split)
        assert len(records) == sum(counts[split].values())
        for example in records:
            feature = example.features.feature
            image = tf.io.decode_image(feature["image"].bytes_list.value[0],
                                       expand_animations=False)
            assert image.shape[:2] == (feature["height"].int64_list.value[0],
                                       feature["width"].int64_list.value[0])
            name = feature["label_name"].bytes_list.value[0].decode()
            assert feature["label"].int64_list.value[0] == ["cats", "dogs"].index(name)
            decoded += 1
    assert decoded == 11


def test_split_and_shards_are_deterministic(tmp_path):
    _tree(str(tmp_path / "images"), np.random.default_rng(1))
    runs = [ingest.ingest(str(tmp_path / "images"), str(tmp_path / f"out{i}"), shards=3,
                          max_skipped_fraction=0.3, progress=False) for i in range(2)]
    assert runs[0]["counts"] == runs[1]["counts"]
    for split in ("train", "eval"):
        for shard in range(3):
            name = f"data-{shard:05d}-of-00003.tfrecord"
            with open(tmp_path / "out0" / split / name, "rb") as a, \
                    open(tmp_path / "out1" / split / name, "rb") as b:
                assert a.read() == b.read()


def _shards(root, split, shards=3):
    """The records of each shard file of a split, parsed, in file order."""
    return [[tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(
        os.path.join(root, split, f"data-{shard:05d}-of-{shards:05d}.tfrecord.gz"), "GZIP")]
        for shard in range(shards)]


def _value(example, key):
    return example.features.feature[key].bytes_list.value[0].decode()


def test_records_are_in_sha256_order_within_shards_assigned_by_hash(tmp_path):
    """Several check chunks, bad files and duplicates among them: every kept image is in the
    shard of its hash, each shard in sha256 order, classes mixed in every shard."""
    rng = np.random.default_rng(4)
    expected = {"train": set(), "eval": set()}
    for name in ("a", "b"):
        for i in range(ingest.CHUNK + 7):
            path = f"{name}/{i:03d}.png"
            data = encode(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8), "PNG")
            if i % 29 == 3:
                data = data[:30]  # truncated: skipped
            elif i % 31 == 5:
                with open(tmp_path / "images" / name / f"{i - 1:03d}.png", "rb") as f:
                    data = f.read()  # a duplicate: skipped
            else:
                expected[ingest.split_of(hashlib.sha256(data).hexdigest(), 0.3)].add(path)
            _save(str(tmp_path / "images" / path), data)
    manifest = ingest.ingest(str(tmp_path / "images"), str(tmp_path / "out"), shards=3,
                             compress=True, eval_fraction=0.3, max_skipped_fraction=0.2,
                             progress=False)
    assert manifest["order"] == "sha256"
    assert len(manifest["skipped"]) == manifest["files"] - sum(map(len, expected.values()))
    for split, paths in expected.items():
        shards = _shards(manifest["root"], split)
        assert {_value(e, "source_path") for shard in shards for e in shard} == paths
        for number, shard in enumerate(shards):
            hashes = [_value(e, "sha256") for e in shard]
            assert hashes == sorted(hashes)
            assert {ingest_beam.shard_of(sha, 3) for sha in hashes} == {number}
    for shard in _shards(manifest["root"], "train"):
        names = [_value(e, "label_name") for e in shard]
        assert set(names) == {"a", "b"} and names != sorted(names)  # mixed, not grouped


def test_examples_are_tensorflows_bytes():
    """The records are serialized without TensorFlow, byte for byte as it does."""
    def feature(value):
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[value if isinstance(value, bytes) else value.encode()]))

    for item, label in [(ingest.Checked("a/b.png", "cats", "ab" * 32, bytes(range(256)) * 3,
                                        300, 4000), 0),
                        (ingest.Checked("ü/x.jpg", "dögs", "f" * 64, b"", 0, 1), 2 ** 40),
                        (ingest.Checked("p", "n", "0" * 64, b"x", 1, 1), -3)]:
        assert ingest.example(item, label) == tf.train.Example(features=tf.train.Features(
            feature={"image": feature(item.data), "label": feature(label),
                     "label_name": feature(item.label_name), "height": feature(item.height),
                     "width": feature(item.width), "source_path": feature(item.path),
                     "sha256": feature(item.sha256)})).SerializeToString(deterministic=True)


def _sequential(image_dir, eval_fraction):
    """The former ingest's semantics, one file after another in file order: the records (as
    TensorFlow serializes them) per split and the manifest's counts, skips and image stats."""
    from domain import data_shape
    files = ingest.scan(image_dir)
    classes = sorted(files)
    records, counts = {"train": set(), "eval": set()}, {
        split: dict.fromkeys(classes, 0) for split in ("train", "eval")}
    first_seen, skipped, shapes = {}, [], []
    for name, paths in files.items():
        for path in paths:
            item = ingest.check_file(image_dir, path, name, ingest.MAX_PIXELS)
            if not item.skipped and item.sha256 in first_seen:
                item.skipped = f"duplicate of {first_seen[item.sha256]}"
            if item.skipped:
                skipped.append({"path": item.path, "reason": item.skipped})
                continue
            first_seen[item.sha256] = item.path
            split = ingest.split_of(item.sha256, eval_fraction)
            counts[split][name] += 1
            shapes.append((item.height, item.width, item.colour))
            records[split].add(tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[item.data])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(
                    value=[classes.index(name)])),
                "label_name": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[name.encode()])),
                "height": tf.train.Feature(int64_list=tf.train.Int64List(value=[item.height])),
                "width": tf.train.Feature(int64_list=tf.train.Int64List(value=[item.width])),
                "source_path": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[path.encode()])),
                "sha256": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[item.sha256.encode()]))})).SerializeToString(deterministic=True))
    return records, {"counts": counts, "skipped": skipped,
                     "images": data_shape.image_stats(shapes)}


def _written(root):
    """The records per split (serialized) of an ingest's output."""
    return {split: {r.numpy() for r in tf.data.TFRecordDataset(
        sorted(glob.glob(os.path.join(root, split, "*"))), "GZIP")} for split in ("train", "eval")}


def test_the_pipeline_writes_what_the_sequential_ingest_did(tmp_path):
    """The messy tree (corrupt, text, duplicate, CMYK and 16-bit re-encoded): the same records
    per split and the same counts, skips (in file order) and image stats as the former
    file-by-file semantics, on the DirectRunner in process and with two processes."""
    _tree(str(tmp_path / "images"), np.random.default_rng(6))
    records, expected = _sequential(str(tmp_path / "images"), 0.3)
    for workers in (1, 2):
        manifest = ingest.ingest(str(tmp_path / "images"), str(tmp_path / f"out{workers}"),
                                 shards=2, compress=True, eval_fraction=0.3, workers=workers,
                                 max_skipped_fraction=0.3, progress=False)
        assert {key: manifest[key] for key in expected} == expected
        assert _written(manifest["root"]) == records


def test_a_failed_run_writes_nothing(tmp_path):
    """A worker error (a file gone between the scan and its check) and too many skipped
    files: no records, no manifest, no class map, no staging folder left."""
    _classes_tree(str(tmp_path / "images"), ["cat", "dog"], np.random.default_rng(7))
    os.symlink(tmp_path / "gone.png", tmp_path / "images" / "dog" / "gone.png")
    out = tmp_path / "data"
    with pytest.raises(Exception, match="gone.png"):
        ingest.ingest(str(tmp_path / "images"), str(out), span=1, progress=False)
    os.remove(tmp_path / "images" / "dog" / "gone.png")
    _save(str(tmp_path / "images" / "dog" / "notes.txt"), b"not an image")
    with pytest.raises(ingest.IngestError, match="1 of 7 files skipped"):
        ingest.ingest(str(tmp_path / "images"), str(out), span=1, max_skipped_fraction=0.1,
                      progress=False)
    assert [name for name in os.listdir(out) if name != ".classes.lock"] == []


@pytest.mark.parametrize("make_bad, message", [
    (lambda root: os.makedirs(f"{root}/birds"), "no usable image: birds"),
    (lambda root: _save(f"{root}/dogs/also-a-cat.jpg", open(f"{root}/cats/a.jpg", "rb").read()),
     "labelled 'cats'"),
])
def test_empty_class_or_conflicting_labels_fail_and_write_nothing(tmp_path, make_bad, message,
                                                                  capsys):
    _tree(str(tmp_path / "images"), np.random.default_rng(2))
    make_bad(str(tmp_path / "images"))
    assert ingest.main([str(tmp_path / "images"), str(tmp_path / "out"),
                        "--max-skipped-fraction", "0.3"]) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_a_missing_folder_is_named_in_one_line(tmp_path, capsys):
    assert ingest.main([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (f"ingest: FAILED: {tmp_path / 'nowhere'} is not a "
                                               "directory (expected <dir>/<class>/<image>)")


def test_too_many_skipped_files_fail(tmp_path):
    _tree(str(tmp_path / "images"), np.random.default_rng(3))
    with pytest.raises(ingest.IngestError, match="3 of 14 files skipped"):
        ingest.ingest(str(tmp_path / "images"), str(tmp_path / "out"),
                      max_skipped_fraction=0.1, progress=False)


def _classes_tree(root, names, rng, per_class=3):
    for name in names:
        for i in range(per_class):
            _save(f"{root}/{name}/{i}.png", encode(rng.integers(0, 256, (8 + i, 9, 3),
                                                                dtype=np.uint8), "PNG"))


def _label_pairs(root) -> set[tuple[str, int]]:
    return {(e.features.feature["label_name"].bytes_list.value[0].decode(),
             e.features.feature["label"].int64_list.value[0])
            for split in ("train", "eval") for e in _records(root, split)}


def test_class_ids_keep_their_meaning_across_spans(tmp_path, capsys):
    """span-1 has cat and dog; span-2 adds ant (which sorts first) and lacks dog: cat keeps
    id 0, dog keeps id 1 (reported missing), ant gets id 2. A legacy data root (spans written
    before class maps) adopts the ids of its newest span's manifest."""
    rng = np.random.default_rng(5)
    out = str(tmp_path / "data")
    _classes_tree(str(tmp_path / "s1"), ["cat", "dog"], rng)
    _classes_tree(str(tmp_path / "s2"), ["ant", "cat"], rng)
    assert ingest.main([str(tmp_path / "s1"), out, "--span", "1", "--compress"]) == 0
    assert ingest.main([str(tmp_path / "s2"), out, "--span", "2", "--compress"]) == 0
    captured = capsys.readouterr()
    assert "New classes, with the next ids: ant" in captured.out
    assert "classes with no image in this span keep their ids: dog" in captured.err
    with open(os.path.join(out, "classes.json")) as f:
        assert json.load(f) == {"classes": ["cat", "dog", "ant"]}
    assert _label_pairs(os.path.join(out, "span-1")) == {("cat", 0), ("dog", 1)}
    assert _label_pairs(os.path.join(out, "span-2")) == {("cat", 0), ("ant", 2)}
    os.remove(os.path.join(out, "classes.json"))  # as before class maps existed
    _classes_tree(str(tmp_path / "s3"), ["bee", "dog"], rng)
    assert ingest.main([str(tmp_path / "s3"), out, "--span", "3", "--compress"]) == 0
    assert _label_pairs(os.path.join(out, "span-3")) == {("dog", 1), ("bee", 3)}
