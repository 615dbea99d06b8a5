"""Query a pushed model locally: ``python -m ops.predict --model DIR image.jpg ...``.

``DIR`` is a SavedModel or a TF Serving model base (its highest version is used). Prints the
top-k classes of each image, through the model's raw-image-bytes signature.
"""
from __future__ import annotations

import argparse
import os
import sys

from modules.features import PROBABILITIES, RAW_INPUT, RAW_SIGNATURE


def resolve_model_dir(path: str) -> str:
    """``path`` itself if it is a SavedModel, else its highest integer version sub-directory."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    versions = [d for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []
    if not versions:
        raise FileNotFoundError(f"{path} is neither a SavedModel nor a directory of versions")
    return os.path.join(path, max(versions, key=int))


def predict(model_dir: str, images: list[bytes], top_k: int = 3) -> list[list[tuple[str, float]]]:
    """For each encoded image, its ``top_k`` ``(class name, probability)``, best first."""
    import numpy as np
    import tensorflow as tf

    model = tf.saved_model.load(resolve_model_dir(model_dir))
    probabilities = model.signatures[RAW_SIGNATURE](**{RAW_INPUT: tf.constant(images)})[
        PROBABILITIES].numpy()
    names = model.class_names.numpy()
    return [[(names[i].decode(), float(row[i])) for i in np.argsort(-row)[:top_k]]
            for row in probabilities]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.predict", description=__doc__)
    parser.add_argument("--model", required=True, help="SavedModel or TF Serving model base dir")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("images", nargs="+", help="JPEG/PNG/GIF/BMP files")
    args = parser.parse_args(argv)
    data = []
    for path in args.images:
        with open(path, "rb") as f:
            data.append(f.read())
    for path, top in zip(args.images, predict(args.model, data, args.top_k)):
        print(f"{path}: " + ", ".join(f"{name} ({p:.3f})" for name, p in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
