"""Shared fixtures: small real images and tf.Examples made on the fly."""
from __future__ import annotations

import io
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# TFX's Beam executors parse sys.argv with absl (base_beam_executor.py): pytest's own flags
# (-v is absl's --verbosity) must not reach it.
sys.argv = sys.argv[:1]


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def mixed_images() -> list[bytes]:
    """JPEG and PNG, grayscale/RGB/RGBA, several sizes, all non-constant."""
    rng = np.random.default_rng(0)
    shapes = [((8, 8), "PNG"), ((20, 13, 3), "JPEG"), ((5, 31, 4), "PNG"), ((64, 64), "JPEG")]
    return [encode(rng.integers(0, 256, size=s, dtype=np.uint8), fmt) for s, fmt in shapes]
