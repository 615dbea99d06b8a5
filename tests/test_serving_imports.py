"""Importing every serving module, in a fresh process, loads no TensorFlow, TFMA, TFX, Beam,
Keras or ``modules`` code: those load only inside the in-process backend, once a version
loads."""
from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys

import serving

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("tensorflow", "tensorflow_model_analysis", "tfx", "apache_beam", "keras", "modules")


def test_no_serving_module_loads_tensorflow_or_its_kin():
    names = [f"serving.{m.name}" for m in pkgutil.iter_modules(serving.__path__)]
    assert {"serving.gateway", "serving.backends", "serving.__main__"} <= set(names)
    script = ("import importlib, json, sys\n"
              f"for name in {names!r}:\n"
              "    importlib.import_module(name)\n"
              "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout))
    assert "starlette" in loaded and not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
