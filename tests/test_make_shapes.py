"""The photo-like dataset generator (tools/make_shapes.py) makes what its users' folders hold."""
from __future__ import annotations

import os
import sys

from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tools"))
from make_shapes import write_shapes  # noqa: E402


def test_varied_sizes_formats_and_colour_modes_that_ingest_accepts(tmp_path):
    from ops import ingest
    paths = write_shapes(str(tmp_path / "images"), per_class=12, classes=3, seed=3)
    assert len(paths) == 36
    assert sorted(os.listdir(tmp_path / "images")) == ["circle", "square", "triangle"]
    images = [Image.open(p) for p in paths]
    assert {i.format for i in images} == {"JPEG", "PNG"}
    assert {i.mode for i in images} == {"RGB", "L", "RGBA"}
    sizes = {i.size for i in images}
    assert len(sizes) > 30 and all(40 <= d <= 300 for size in sizes for d in size)
    assert write_shapes(str(tmp_path / "again"), 12, 3, 3) and open(paths[5], "rb").read() == \
        open(paths[5].replace("images", "again"), "rb").read()  # deterministic per seed
    assert ingest.main([str(tmp_path / "images"), str(tmp_path / "records")]) == 0
