"""Query a pushed model locally: ``python -m ops.predict --model DIR image.jpg ...``.

``DIR`` is a SavedModel or a TF Serving model base, where the version served by default is
used (the ``stable`` label, or the highest version without labels; ``--label`` or
``--version`` choose another). Prints the top-k classes of each image, through the model's
raw-image-bytes signature.
"""
from __future__ import annotations

import argparse
import os
import sys

from domain import registry
from domain.labels import read_labels


def resolve_model_dir(path: str, version: int = 0, label: str = "") -> str:
    """``path`` itself if it is a SavedModel; in a model base, ``version`` if given, else the
    version ``label`` names, else the one served by default (``registry.served_version``).
    Raises FileNotFoundError, in words, when there is no such version."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        if version or label:
            raise FileNotFoundError(f"{path} is a SavedModel: it has no versions or labels")
        return path
    present = registry.versions(path)
    if not present:
        raise FileNotFoundError(f"{path} is neither a SavedModel nor a directory of versions")
    if label:
        labels = read_labels(path)
        version = (labels.versions if labels else {}).get(label, 0)
        if not version:
            raise FileNotFoundError(f"{path}: no version is labelled {label!r} (labels: "
                                    f"{labels.versions if labels else 'none in use'})")
    version = version or registry.served_version(path)
    if version not in present:
        raise FileNotFoundError(f"{path} has no version {version} (present: {present})")
    return os.path.join(path, str(version))


def predict(model_dir: str, images: list[bytes], top_k: int = 3) -> list:
    """For each encoded image, its ``top_k`` ``(class name, probability)``, best first, or a
    ``str``: why that image was refused (not an image, too many pixels, corrupt), in words.
    ``model_dir``: a SavedModel, or a model base whose default version answers."""
    import numpy as np

    from modules.classify import SavedClassifier, Undecodable
    model = SavedClassifier(resolve_model_dir(model_dir))
    results = []
    for image in images:  # one at a time: a bad image costs only its own answer
        try:
            row = model.images([image])[0]
        except Undecodable as err:
            results.append(str(err))
            continue
        results.append([(model.class_names[i], float(row[i])) for i in np.argsort(-row)[:top_k]])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.predict", description=__doc__)
    parser.add_argument("--model", required=True, help="SavedModel or TF Serving model base dir")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--label", default="", help="in a model base: the version with this "
                        "label (stable, canary); default: the served one")
    choice.add_argument("--version", type=int, default=0, help="in a model base: this version")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("images", nargs="+", help="JPEG/PNG/GIF/BMP/WebP files")
    args = parser.parse_args(argv)
    try:
        model_dir = resolve_model_dir(args.model, args.version, args.label)
    except FileNotFoundError as err:
        print(f"predict: --model {err}", file=sys.stderr)
        return 2
    answers: dict[str, object] = {}
    for path in args.images:
        try:
            with open(path, "rb") as f:
                answers[path] = f.read()
        except OSError as err:
            answers[path] = f"cannot read: {err.strerror}"
    readable = [path for path, data in answers.items() if isinstance(data, bytes)]
    if readable:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's own logs: noise here
        answers.update(zip(readable, predict(model_dir, [answers[p] for p in readable],
                                             args.top_k)))
    for path, top in answers.items():
        if isinstance(top, str):
            print(f"{path}: {top}", file=sys.stderr)
        else:
            print(f"{path}: " + ", ".join(f"{name} ({p:.3f})" for name, p in top))
    return 2 if any(isinstance(top, str) for top in answers.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
