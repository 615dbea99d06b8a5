"""The class map that travels with the data: ``<data root>/classes.json``, the class names in
id order. ``ops.ingest`` writes it and extends it for each new span (a new class gets the next
id, a class missing from a span keeps its id), so label ids mean the same thing in every
span; every pushed version records the class names it was trained on, and a run whose data's
classes disagree with the served version's is stopped (``disagreement``).
"""
from __future__ import annotations

import json
import os

from domain import files

CLASS_MAP = "classes.json"


def read(data_root: str) -> list[str] | None:
    """The class names of a local ``data_root`` in id order; None when it has no class map
    (object stores are not read: the pipeline is compiled without network access)."""
    path = os.path.join(data_root, CLASS_MAP)
    if "://" in data_root:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            classes = json.load(f)["classes"]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a class map ({err}): expected "
                         '{"classes": ["<name of id 0>", ...]}') from None
    return classes


def locked(data_root: str):
    """Serialises writers of ``data_root``'s class map (two ingests of new spans at once)."""
    return files.locked(os.path.join(data_root, ".classes.lock"))


def extend(data_root: str, names: list[str]) -> tuple[list[str], list[str], list[str]]:
    """``(classes, added, missing)``: the class map with ``names`` not in it appended (sorted),
    the names added, and the classes of the map absent from ``names``. Writes nothing."""
    classes = read(data_root) or []
    added = sorted(set(names) - set(classes))
    return classes + added, added, [c for c in classes if c not in set(names)]


def write(data_root: str, classes: list[str]) -> None:
    """Replaces the class map whole and durably (call under ``locked``)."""
    files.write_atomically(os.path.join(data_root, CLASS_MAP),
                           json.dumps({"classes": classes}, indent=1), prefix=".classes-")


def disagreement(data: list[str], served: list[str] | None, served_version: int,
                 allow_new: bool = False) -> str:
    """Why a model trained on classes ``data`` must not be gated against or replace served
    ``served_version`` (trained on ``served``), naming the classes; "" when they agree, or
    when ``allow_new`` and ``data`` only appends classes (a new head)."""
    if not served or served == data or (allow_new and data[:len(served)] == served):
        return ""
    moved = [f"id {i}: {old!r} served, {new!r} in the data"
             for i, (old, new) in enumerate(zip(served, data)) if old != new]
    if moved:
        return (f"class ids changed meaning against served version {served_version}: "
                + "; ".join(moved[:5]))
    if len(data) > len(served):
        return (f"the data has classes served version {served_version} does not know: "
                f"{', '.join(data[len(served):])} (a new head: allow it with "
                "--allow-new-classes true)")
    return (f"the data lacks classes of served version {served_version}: "
            f"{', '.join(served[len(data):])}")
