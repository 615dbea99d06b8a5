"""A photo-like image folder for tests and benchmarks: ``python tools/make_shapes.py OUT``.

Writes ``OUT/<class>/<n>.<jpg|png>``: one simple shape per image (circle, square, triangle,
and more with ``--classes``) in a random colour, size, position and rotation, on a random
background (flat colour, linear gradient, or noise with blotches), 40-300 px wide and high
(aspect ratios from 3:5 to 5:3),
JPEG or PNG, RGB, grayscale or RGBA. Colours are drawn independently of the class, so a model
must learn shapes, not colours. Deterministic for a ``--seed``.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import sys

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "cross")


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:  # flat
        return np.broadcast_to(rng.integers(0, 256, 3), (height, width, 3)).astype(np.float32)
    if kind == 1:  # linear gradient between two colours
        a, b = rng.integers(0, 256, (2, 3)).astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        y, x = np.mgrid[0:height, 0:width]
        t = (x * math.cos(angle) + y * math.sin(angle))
        t = (t - t.min()) / max(t.max() - t.min(), 1)
        return a + (b - a) * t[..., None]
    base = rng.integers(0, 256, 3).astype(np.float32)  # noise with soft blotches
    image = base + rng.normal(0, 25, (height, width, 3))
    for _ in range(rng.integers(2, 6)):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(5, 60)
        y, x = np.mgrid[0:height, 0:width]
        mask = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
        image += mask[..., None] * rng.uniform(-80, 80, 3)
    return image


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple]:
    if shape == "square":
        corners = [angle + math.pi / 4 + k * math.pi / 2 for k in range(4)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in corners]
    if shape == "triangle":
        return [(cx + r * math.cos(angle + k * 2 * math.pi / 3),
                 cy + r * math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    if shape == "star":
        return [(cx + (r if k % 2 == 0 else r * 0.45) * math.cos(angle + k * math.pi / 5),
                 cy + (r if k % 2 == 0 else r * 0.45) * math.sin(angle + k * math.pi / 5))
                for k in range(10)]
    w = r * 0.35  # cross
    arm = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w),
           (-r, w), (-r, -w), (-w, -w)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in arm]


def draw(rng: np.random.Generator, shape: str):
    """One image (a PIL Image) of ``shape``."""
    from PIL import Image, ImageDraw, ImageFilter
    width = int(rng.integers(40, 301))  # photo-like aspect ratios: 3:5 to 5:3
    height = int(np.clip(width * rng.uniform(0.6, 1.67), 40, 300))
    background = np.clip(_background(rng, height, width), 0, 255)
    image = Image.fromarray(background.astype(np.uint8))
    side = min(height, width)
    r = rng.uniform(0.2, 0.42) * side
    cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
    # Any colour, but visible (also in grayscale): luminance apart from the background's.
    colour, luma = rng.integers(0, 256, 3), np.array([0.299, 0.587, 0.114])
    while abs((colour - background.mean(axis=(0, 1))) @ luma) < 45:
        colour = rng.integers(0, 256, 3)
    colour = tuple(int(v) for v in colour)
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        pen.polygon(_polygon(shape, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=colour)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    mode = rng.choice(["RGB", "RGB", "L", "RGBA"])
    return image.convert(str(mode))


def encoded_shapes(n: int, classes: int, seed: int) -> tuple[list[bytes], np.ndarray]:
    """``n`` PNGs of random ones of the first ``classes`` shapes, and their class ids."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    encoded = []
    for label in labels:
        out = io.BytesIO()
        draw(rng, SHAPES[label]).save(out, format="PNG")
        encoded.append(out.getvalue())
    return encoded, labels


def write_shapes(out: str, per_class: int, classes: int = 3, seed: int = 0) -> list[str]:
    """Writes ``per_class`` images of each of the first ``classes`` shapes; returns paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for shape in SHAPES[:classes]:
        os.makedirs(os.path.join(out, shape), exist_ok=True)
        for n in range(per_class):
            image = draw(rng, shape)
            jpeg = image.mode != "RGBA" and rng.random() < 0.6
            path = os.path.join(out, shape, f"{n:05d}.{'jpg' if jpeg else 'png'}")
            image.save(path, **({"quality": int(rng.integers(70, 96))} if jpeg else {}))
            paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/make_shapes.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--classes", type=int, default=3, choices=range(2, len(SHAPES) + 1))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_shapes(args.out, args.per_class, args.classes, args.seed)
    print(f"{len(paths)} images in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
