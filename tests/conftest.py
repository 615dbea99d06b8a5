"""Shared fixtures (small real images made on the fly, an MLMD history, the one digits run of
a session) and the test tiers.

Tiers (markers registered in pytest.ini; ``make test-fast`` runs ``-m unit``):

* ``e2e``: whole pipeline runs (LocalDagRunner, real training) and what reads them;
* ``training``: a model trained for real outside a pipeline (tens of seconds each);
* ``kfp``: compiled packages run through the KFP v2 backend harness (tests/kfp_backend.py);
* ``gateway``: real gateway processes and HTTP servers;
* ``browser``: drives Chromium (skips without it); also in its module's tier;
* ``unit``: everything else, which is every test not in one of the tiers above.

A module's tier is set here (``TIERS``, single tests in ``TEST_TIERS``) or by a marker
in the module (``pytestmark = pytest.mark.e2e``, ``@pytest.mark.training``).
"""
from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import pytest

from tests.helpers import DIGITS_FLAGS, ROOT, encode  # noqa: F401 - re-exported for the tests

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# TFX's Beam executors parse sys.argv with absl (base_beam_executor.py): pytest's own flags
# (-v is absl's --verbosity) must not reach it.
sys.argv = sys.argv[:1]

TIER_MARKERS = ("e2e", "training", "kfp", "gateway")
TIERS = {
    "test_pipeline_e2e.py": ("e2e",),
    "test_retraining_e2e.py": ("e2e",),
    "test_data_contract_e2e.py": ("e2e",),
    "test_pipeline_formats_e2e.py": ("e2e",),
    "test_pipeline_ram_root.py": ("e2e",),
    "test_operator.py": ("e2e",),
    "test_image_validator.py": ("e2e",),
    "test_kubeflow_run.py": ("kfp",),
    "test_kfp_retry.py": ("kfp",),  # a whole run in the backend harness
    "test_dask_kfp.py": ("kfp",),  # the Beam tasks on the session's Dask cluster
    "test_gateway.py": ("gateway", "e2e"),  # over the session's digits run
    "test_gateway_attacks.py": ("gateway",),
    "test_gateway_edge.py": ("gateway",),
    "test_gateway_nginx.py": ("gateway",),
    "test_feedback.py": ("gateway",),
    "test_learning.py": ("training",),
}
TEST_TIERS = {  # (module, test function) in a module of another tier
    ("test_model.py", "test_multi_worker_training_with_two_local_workers_on_loopback"):
        ("training",),
    ("test_model.py", "test_mirrored_strategy_over_several_devices"): ("training",),
    ("test_evaluation.py", "test_balanced_weights_raise_the_recall_of_a_rare_class"):
        ("training",),
}


# The modules whose tests read the session's digits run: one group of make test's processes
# (pytest-xdist), so the run is built once. A module that reads it elsewhere stops collection.
DIGITS_MODULES = ("test_pipeline_e2e.py", "test_gateway.py", "test_edge_e2e.py",
                  "test_dask_equivalence.py")


def group(module: str) -> str:
    """A test module's group in ``make test``'s processes: ``digits`` or the module."""
    return "digits" if module in DIGITS_MODULES else module


def pytest_xdist_make_scheduler(config, log):
    """``make test``'s scheduler: pytest-xdist's per-scope one, with a module's tests as one
    scope (its module fixtures built once) and the ``DIGITS_MODULES`` as one. (xdist's own
    ``xdist_group`` marks are lost on pytest 9, whose node ids it can no longer rename.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group(os.path.basename(nodeid.split("::")[0]))
    return ModuleGroups(config, log)


def pytest_collection_modifyitems(config, items):
    """Each test gets its module's tier (else ``unit``), tests that drive Chromium also
    ``browser``. Groups holding a pipeline run go first, so that the longest work starts
    first in ``make test``; tests marked ``digits_run_last`` (they change the digits run) go
    after every other test."""
    for item in items:
        module = os.path.basename(str(item.fspath))
        for tier in TIERS.get(module, ()) + TEST_TIERS.get(
                (module, getattr(item, "originalname", item.name)), ()):
            item.add_marker(tier)
        if "chromium" in item.name:
            item.add_marker("browser")
        if not any(item.get_closest_marker(tier) for tier in TIER_MARKERS):
            item.add_marker("unit")
        if "digits_run" in item.fixturenames and module not in DIGITS_MODULES:
            raise pytest.UsageError(f"{module} reads the digits run: add it to DIGITS_MODULES")
    items[:] = sorted(items, key=_order(items))


def _order(items):
    """Sort key: a group's heaviest tier (``TIER_MARKERS``' order, then ``unit``), the
    group's first position, ``digits_run_last``, the test's position."""
    first, rank, position = {}, {}, {id(item): n for n, item in enumerate(items)}
    for item in items:
        name = group(os.path.basename(str(item.fspath)))
        first.setdefault(name, len(first))
        tiers = [n for n, tier in enumerate(TIER_MARKERS) if item.get_closest_marker(tier)]
        rank[name] = min(rank.get(name, len(TIER_MARKERS)), *tiers, len(TIER_MARKERS))

    def key(item):
        name = group(os.path.basename(str(item.fspath)))
        return (rank[name], first[name],
                item.get_closest_marker("digits_run_last") is not None, position[id(item)])
    return key


@pytest.fixture
def mixed_images() -> list[bytes]:
    """JPEG and PNG, grayscale/RGB/RGBA, several sizes, all non-constant."""
    rng = np.random.default_rng(0)
    shapes = [((8, 8), "PNG"), ((20, 13, 3), "JPEG"), ((5, 31, 4), "PNG"), ((64, 64), "JPEG")]
    return [encode(rng.integers(0, 256, size=s, dtype=np.uint8), fmt) for s, fmt in shapes]


@pytest.fixture
def store(tmp_path):
    """An MLMD history (tests/mlmd_history.py): run 1 trains on span 1 and pushes version 1;
    run 2 is its identical rerun (all cached); run 3 trains on span 2 and pushes version 2.
    ``(store, run 1's artifacts, run 3's artifacts)``."""
    from tests.mlmd_history import three_runs
    return three_runs(tmp_path / "metadata.sqlite")


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """THE pushed run on the embedded digits data of this session (``DIGITS_FLAGS``: a short
    KerasTuner search, then training, gate and push of version 1): ``(config, outcome)``.

    Every test that reads a default digits run uses this one. Tests that add runs to its
    work dir leave its serving dir as they found it; the one test that changes it (a
    rollback) is marked ``digits_run_last`` and runs after every other test."""
    from pipeline import local_runner
    from pipeline.config import PipelineConfig
    config = PipelineConfig.from_args(
        ["--work-dir", str(tmp_path_factory.mktemp("digits"))] + DIGITS_FLAGS, environ={})
    outcome = local_runner.run(config)
    assert outcome.pushed, outcome
    return dataclasses.replace(config, data_root=config.default_data_root), outcome


@pytest.fixture(scope="session")
def dask_cluster():
    """THE loopback Dask cluster of a test process (tools/dask_cluster.py: a scheduler and two
    single-thread workers): its address, shared by every Dask test of the process (``make
    test``'s two processes start one each at most)."""
    from tools.dask_cluster import loopback_cluster
    with loopback_cluster() as address:
        yield address
