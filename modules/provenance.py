"""The code that trained a model, for lineage: the git commit (and whether the checkout had
uncommitted changes), a hash of the module files, and the package version. Recorded by the
Trainer beside the model (``CODE_FILE``), never in a cache key: a commit that does not touch
the modules must not retrain.
"""
from __future__ import annotations

import glob
import hashlib
import os
import subprocess

MODULES = os.path.dirname(os.path.abspath(__file__))


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", MODULES, *args], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git, as in a container image
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def modules_sha256() -> str:
    """One hash over the module files' names and contents."""
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(MODULES, "*.py"))):
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read() + b"\0")
    return digest.hexdigest()


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
