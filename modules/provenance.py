"""The code that trained a model, for lineage: the git commit (and whether the checkout had
uncommitted changes), a hash of the module files, and the package version. Recorded by the
Trainer beside the model (``CODE_FILE``), never in a cache key: a commit that does not touch
the modules must not retrain. What does key the cache is ``source_sha256``: the files a
component's code is made of (``modules/`` and ``components/``).
"""
from __future__ import annotations

import ast
import glob
import hashlib
import os
import subprocess

MODULES = os.path.dirname(os.path.abspath(__file__))
PACKAGES = ("domain", "modules", "components")  # the project's code that TFX components run


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", MODULES, *args], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git, as in a container image
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _sha256(names) -> str:
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode() + b"\0")
        with open(os.path.join(MODULES, name), "rb") as f:
            digest.update(f.read() + b"\0")
    return digest.hexdigest()


def modules_sha256() -> str:
    """One hash over the module files' names and contents."""
    return _sha256(os.path.basename(p) for p in glob.glob(os.path.join(MODULES, "*.py")))


def _file(module: str) -> str | None:
    """``modules.<name>[.attr]`` or ``components.<name>[.attr]`` -> its file, relative to
    ``MODULES`` (None: not a project module)."""
    parts = module.split(".")
    if parts[0] not in PACKAGES or len(parts) < 2:
        return None
    path = os.path.join(os.path.dirname(MODULES), parts[0], parts[1] + ".py")
    return os.path.relpath(path, MODULES) if os.path.exists(path) else None


def source_sha256(module: str) -> str:
    """A hash over ``module``'s file (``modules.<name>`` or ``components.<name>``) and the
    project files it imports, transitively: part of a component's cache key, so that editing
    the code a component runs reruns it, and editing other code does not."""
    files, todo = set(), [module]
    while todo:
        name = _file(todo.pop())
        if name is None or name in files:
            continue
        files.add(name)
        with open(os.path.join(MODULES, name), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                todo.append(node.module)  # from modules.x import y
                todo += [f"{node.module}.{alias.name}" for alias in node.names]  # from pkg import x
    return _sha256(files)


def project_sha256() -> str:
    """One hash over every project module the pipeline runs (``pipeline/``, ``components/``,
    ``modules/``): an identical rerun must find it unchanged."""
    return _sha256(os.path.relpath(path, MODULES) for package in ("pipeline", *PACKAGES)
                   for path in glob.glob(os.path.join(os.path.dirname(MODULES), package, "*.py")))


def package_version() -> str:
    """The installed project's version (``unknown`` when run from a bare checkout)."""
    from importlib import metadata
    try:
        return metadata.version("tfx-image-pipeline")
    except metadata.PackageNotFoundError:
        return "unknown"


def code_version() -> dict:
    """``git_commit`` and ``git_dirty`` (None outside a git checkout), ``modules_sha256`` and
    ``package`` (the installed project's version)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": bool(status) if commit else None,
            "modules_sha256": modules_sha256(), "package": package_version()}
