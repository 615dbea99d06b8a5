"""The layout's rules, read from the code: imports point down the layers, the shared domain
imports no training stack, and functions stay short enough to read."""
from __future__ import annotations

import ast
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each package and the project packages it may import (ARCHITECTURE.md draws the same map).
LAYERS = {
    "domain": set(),
    "modules": {"domain"},
    "components": {"domain", "modules"},
    "pipeline": {"domain", "modules", "components"},
    "serving": {"domain"},
    "ops": {"domain", "modules", "components", "pipeline", "serving"},
    "tools": {"domain", "pipeline", "serving"},
    "bench": {"domain", "modules", "pipeline", "ops", "tools"},
}
# The one climb allowed, inside a function: the gateway's in-process backend loads the
# SavedModel classifier (and TensorFlow) when it starts, never at import.
LAZY = {("serving/backends.py", "modules")}
# What the domain may import beyond the standard library and itself.
DOMAIN_LIBRARIES = {"ml_metadata", "google", "tensorflow_serving", "google_crc32c"}
HEAVY = ("tensorflow", "tensorflow_model_analysis", "tensorflow_transform", "tfx",
         "apache_beam", "keras", "tf_keras")
MAX_LINES = {"serving": 60}  # per package; 100 everywhere else


def _sources(package: str) -> list[str]:
    return sorted(glob.glob(os.path.join(ROOT, package, "*.py")))


def _imports(path: str) -> list[tuple[str, bool]]:
    """``(imported module, at module level)`` for every absolute import in ``path``."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, id(node) in top))
        elif isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
    return found


def test_every_package_is_in_the_layer_map():
    packages = {name for name in os.listdir(ROOT) if os.path.isfile(
        os.path.join(ROOT, name, "__init__.py")) or name in ("tools", "bench")}
    assert packages - {"tests"} == set(LAYERS)


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_imports_point_down_the_layers(package):
    climbs = []
    for path in _sources(package):
        relative = os.path.relpath(path, ROOT)
        for module, top_level in _imports(path):
            target = module.split(".")[0]
            if target in LAYERS and target != package and target not in LAYERS[package] \
                    and (top_level or (relative, target) not in LAZY):
                climbs.append(f"{relative} imports {module}")
    assert climbs == [], f"{package} may import only {sorted(LAYERS[package])}"


def test_the_domain_imports_the_standard_library_and_protos_only():
    foreign = [f"{os.path.relpath(path, ROOT)} imports {module}"
               for path in _sources("domain") for module, _ in _imports(path)
               if module.split(".")[0] not in sys.stdlib_module_names | DOMAIN_LIBRARIES
               | {"domain"}]
    assert foreign == []


def _loaded_after_importing(packages: tuple[str, ...]) -> list[str]:
    modules = [f"{p}.{os.path.basename(f)[:-3]}" for p in packages for f in _sources(p)
               if not f.endswith("__main__.py")]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr
    return eval(done.stdout.strip().splitlines()[-1])  # a printed list of names


def test_importing_the_domain_and_the_gateway_loads_no_training_stack():
    """A fresh process: every domain and serving module imported, and (for serving/) the
    local backend's TensorFlow only when it starts."""
    assert _loaded_after_importing(("domain", "serving")) == []


def test_no_function_is_longer_than_the_rule():
    long = []
    for package in LAYERS:
        limit = MAX_LINES.get(package, 100)
        for path in _sources(package):
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > limit:
                        long.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} "
                                    f"{node.name} ({lines} lines > {limit})")
    assert long == []
