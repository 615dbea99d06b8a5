"""The code that trained a model, for lineage: the git commit (and whether the checkout had
uncommitted changes), a hash of the module files, and the package version. Recorded by the
Trainer beside the model (``CODE_FILE``), never in a cache key: a commit that does not touch
the modules must not retrain. What does key the cache is ``source_sha256``: the files a
component's code is made of (its module and every project module it imports, transitively).
"""
from __future__ import annotations

import ast
import functools
import glob
import hashlib
import os
import subprocess

MODULES = os.path.dirname(os.path.abspath(__file__))
# The project's packages: a component's code may import any of them.
PACKAGES = ("domain", "modules", "components", "pipeline", "ops", "serving")


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


def _files(module: str) -> list[str]:
    """The project files importing ``module`` (``pkg[.sub...][.attr]``) runs: each package's
    ``__init__.py`` and the module's file, relative to ``MODULES`` (none outside
    ``PACKAGES``)."""
    parts, found = module.split("."), []
    if parts[0] not in PACKAGES:
        return found
    for depth in range(1, len(parts) + 1):
        path = os.path.join(os.path.dirname(MODULES), *parts[:depth])
        candidates = [path + ".py", os.path.join(path, "__init__.py")]
        existing = [c for c in candidates if os.path.isfile(c)]
        if not existing:
            break  # an attribute (``from pkg.mod import name``)
        found.append(os.path.relpath(existing[0], MODULES))
    return found


def _imported(tree: ast.AST) -> list[str]:
    """Every module name ``tree`` imports, at any depth (functions too): ``import a.b``,
    ``from a import b`` (``a`` and ``a.b``, which may be a module)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


@functools.lru_cache(maxsize=None)
def _imports_of(name: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    """``_imported`` of a project file, parsed once per version of it (a run hashes the same
    files for every component)."""
    with open(os.path.join(MODULES, name), encoding="utf-8") as f:
        return tuple(_imported(ast.parse(f.read())))


def source_sha256(module: str) -> str:
    """A hash over ``module``'s file (``modules.<name>``, ``components.<name>``...) and every
    project file it imports, transitively (``PACKAGES``): part of a component's cache key, so
    that editing the code a component runs reruns it, and editing other code does not."""
    files, todo = set(), [module]
    while todo:
        for name in _files(todo.pop()):
            if name in files:
                continue
            files.add(name)
            stat = os.stat(os.path.join(MODULES, name))
            todo += _imports_of(name, stat.st_mtime_ns, stat.st_size)
    return _sha256(files)


def project_sha256() -> str:
    """One hash over every project module (``PACKAGES``): an identical rerun must find it
    unchanged (any component's ``source_sha256`` covers part of it)."""
    return _sha256(os.path.relpath(path, MODULES) for package in PACKAGES
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
