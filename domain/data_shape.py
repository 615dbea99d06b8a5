"""The model's input from the images: the sizing rule, grey or colour, and the image statistics
``ops.ingest`` writes into a span's ``manifest.json`` (``images``), which the runners read
(``pipeline.data_shape``) without TensorFlow.

The rule: the input is square, its side the images' median longer side rounded down to one of
``SIDES`` (images under 8 px keep their side), at most ``CAP`` for the backbone (CPU-sized:
the cnn's stem strides 2 up to 127 px; the application backbones want at least 32 px);
3 channels when at least ``COLOUR_SHARE`` of the images are in colour, else 1.
"""
from __future__ import annotations

import statistics

SIDES = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224)
CAP = {"cnn": 64, "mobilenet_v2": 128, "efficientnet_b0": 128}
FLOOR = {"cnn": 1, "mobilenet_v2": 32, "efficientnet_b0": 32}
COLOUR_SHARE = 0.1  # of the images in colour: the model sees 3 channels
GREY_SPREAD = 12  # most a pixel's channels differ (of 255) in an image counted as grey
LARGE = 4  # a hint when the images' median side is this many times the input's or more
FEW = 10  # a hint for a class with fewer training images
RULE = ("the images' median longer side rounded down to 8, 16, 24, 32, 48, 64, 96, 128, 160, "
        "192 or 224 px, at most 64 for the cnn backbone and 128 for the others (at least 32)")


def input_side(median_side: float, backbone: str = "cnn") -> int:
    """The input's side for images of ``median_side`` (their median longer side)."""
    fitting = [side for side in SIDES if side <= median_side]
    side = fitting[-1] if fitting else max(1, int(median_side))
    return max(min(side, CAP.get(backbone, CAP["cnn"])), FLOOR.get(backbone, 1))


def input_channels(colour: int, images: int) -> int:
    """3 when at least ``COLOUR_SHARE`` of ``images`` are in colour, else 1."""
    return 3 if images and colour / images >= COLOUR_SHARE else 1


def image_stats(shapes: list[tuple[int, int, bool]]) -> dict:
    """The manifest's ``images`` entry of ``(height, width, in colour)`` per kept image."""
    if not shapes:
        return {"count": 0}
    sides = [max(h, w) for h, w, _ in shapes]
    return {"count": len(shapes), "median_side": statistics.median(sides),
            "median_height": statistics.median(h for h, _, _ in shapes),
            "median_width": statistics.median(w for _, w, _ in shapes),
            "min_side": min(sides), "max_side": max(sides),
            "colour": sum(1 for *_, colour in shapes if colour)}


def few_images(counts: dict[str, int]) -> list[str]:
    """The classes of ``counts`` (name -> training images) with fewer than ``FEW``."""
    return [name for name, count in counts.items() if count < FEW]
