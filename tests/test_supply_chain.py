"""Every dependency declared and locked with hashes: each third-party module the code, tests
and benches import comes from a distribution setup.py names (not from someone else's
dependency), and every distribution of requirements.lock is pinned with sha256 hashes."""
from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import re
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import manylinux_repair  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("domain", "pipeline", "components", "modules", "ops", "serving", "tools", "bench", "tests")


def _name(requirement: str) -> str:
    """Normalised distribution name of a requirement (``PyJWT[crypto]>=2`` -> ``pyjwt``)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", requirement)[0]).lower()


def declared() -> set[str]:
    """The distributions setup.py's install_requires and extras name, read from its source."""
    call = next(node for node in ast.walk(ast.parse((ROOT / "setup.py").read_text()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    keywords = {k.arg: ast.literal_eval(k.value) for k in call.keywords
                if k.arg in ("install_requires", "extras_require")}
    extras = [r for group in keywords["extras_require"].values() for r in group]
    return {_name(r) for r in keywords["install_requires"] + extras}


def imported_modules() -> dict[str, str]:
    """Each third-party module imported (``a.b`` for ``import a.b``; ``a.b`` and ``a.b.c`` for
    ``from a.b import c``, c being a module or not) -> a file importing it."""
    local = set(SOURCES) | {p.stem for folder in ("tools", "bench", "tests")
                            for p in (ROOT / folder).glob("*.py")}
    found = {}
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in local | {"__future__"}:
                        found.setdefault(name, str(path.relative_to(ROOT)))
    return found


def owners() -> dict[str, str]:
    """Installed file path (relative to site-packages) -> its distribution."""
    found = {}
    for dist in metadata.distributions():
        name = _name(dist.metadata["Name"])
        found.update((file.as_posix(), name) for file in dist.files or []
                     if not str(file).startswith(".."))
    return found


def distribution_of(module: str, by_file: dict[str, str]) -> str | None:
    """The distribution whose files hold ``module`` (its longest part that is a file), found
    without importing it: ``tfx.v1`` and ``tfx.components`` can come from different ones."""
    parts = module.split(".")
    spec = importlib.util.find_spec(parts[0])
    if spec is None:
        return None
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    roots = [Path(p).parent for p in spec.submodule_search_locations or []] or \
        [Path(spec.origin).parent]
    suffixes = [".py"] + importlib.machinery.EXTENSION_SUFFIXES
    for n in range(len(parts), 0, -1):
        for root in roots:
            base = root.resolve().joinpath(*parts[:n])
            for candidate in [base / "__init__.py"] + [base.with_name(base.name + s)
                                                       for s in suffixes]:
                if candidate.is_relative_to(site):
                    owner = by_file.get(candidate.relative_to(site).as_posix())
                    if owner:
                        return owner
    return None


def test_every_imported_module_comes_from_a_declared_distribution():
    by_file, names = owners(), declared()
    undeclared = {module: (distribution_of(module, by_file), where)
                  for module, where in imported_modules().items()
                  if distribution_of(module, by_file) not in names | {None}}
    assert not undeclared, f"imported, not in setup.py (module: (distribution, file)): {undeclared}"


def test_every_declared_distribution_is_locked_with_hashes():
    pins = manylinux_repair.locked_requirements(ROOT / "requirements.lock")
    assert not declared() - pins.keys() - {"tfx-image-pipeline"}
    unhashed = [name for name, (_, hashes) in pins.items() if not hashes]
    assert not unhashed and len(pins) > 200
    assert not re.search(r"(?m)^-e ", (ROOT / "requirements.lock").read_text())
