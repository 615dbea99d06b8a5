"""The folder-to-TFRecords converter on a messy generated image tree."""
from __future__ import annotations

import glob
import hashlib
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from ops import ingest
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


def test_images_stream_to_the_shards_in_file_order(tmp_path):
    """More files than the checking process has in flight, with bad files and duplicates
    among them: every shard holds the kept images of its split in file order, round-robin."""
    rng = np.random.default_rng(4)
    expected = {"train": [], "eval": []}
    for name in ("a", "b"):
        for i in range(ingest.CHUNK * ingest.IN_FLIGHT + 7):
            path = f"{name}/{i:03d}.png"
            data = encode(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8), "PNG")
            if i % 29 == 3:
                data = data[:30]  # truncated: skipped
            elif i % 31 == 5:
                with open(tmp_path / "images" / name / f"{i - 1:03d}.png", "rb") as f:
                    data = f.read()  # a duplicate: skipped
            else:
                split = ingest.split_of(hashlib.sha256(data).hexdigest(), 0.3)
                expected[split].append(path.encode())
            _save(str(tmp_path / "images" / path), data)
    manifest = ingest.ingest(str(tmp_path / "images"), str(tmp_path / "out"), shards=3,
                             compress=True, eval_fraction=0.3, workers=1,
                             max_skipped_fraction=0.2, progress=False)
    assert len(manifest["skipped"]) == manifest["files"] - sum(map(len, expected.values()))
    for split, paths in expected.items():
        for shard in range(3):
            records = tf.data.TFRecordDataset(
                str(tmp_path / "out" / split / f"data-{shard:05d}-of-00003.tfrecord.gz"), "GZIP")
            assert [tf.train.Example.FromString(r.numpy()).features.feature["source_path"]
                    .bytes_list.value[0] for r in records] == paths[shard::3]


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
