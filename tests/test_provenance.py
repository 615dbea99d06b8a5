"""A component's code hash (``code_sha256``, its cache key) follows every project module its
code imports: from any project package, as ``import a.b`` or ``from a import b``, at module
level or inside a function. Edited in a copy of the project."""
from __future__ import annotations

import os
import shutil

import pytest

from modules import provenance

VALIDATOR = "components.image_validator"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A copy of the project's packages, which ``provenance`` hashes."""
    root = tmp_path / "code"
    for package in provenance.PACKAGES:
        shutil.copytree(os.path.join(os.path.dirname(provenance.MODULES), package),
                        root / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "MODULES", str(root / "modules"))
    return root


def _edit(path, line: str = "# edited") -> None:
    with open(path, "a") as f:
        f.write(f"\n{line}\n")


@pytest.mark.parametrize("imported", [
    "domain/records.py",  # from domain.records import compression
    "domain/features.py",  # from domain.features import ImageSpec; and through domain.records
    "domain/__init__.py",  # the package a module of it runs
    "modules/preprocessing.py",  # imported inside a function
])
def test_editing_a_module_a_component_imports_changes_its_code_hash(project, imported):
    before = provenance.source_sha256(VALIDATOR)
    _edit(project / imported)
    assert provenance.source_sha256(VALIDATOR) != before, \
        f"{VALIDATOR}'s code hash missed an edit of {imported}, which its code imports"


def test_import_statements_of_any_project_package_are_followed(project):
    _edit(project / "components" / "image_validator.py",
          "def _later():\n    import ops.schema\n    from serving import limits")
    before = provenance.source_sha256(VALIDATOR)
    for imported in ("ops/schema.py", "serving/limits.py", "ops/__init__.py"):
        _edit(project / imported)
        after = provenance.source_sha256(VALIDATOR)
        assert after != before, f"an edit of {imported} left {VALIDATOR}'s code hash unchanged"
        before = after


def test_editing_code_a_component_does_not_import_keeps_its_code_hash(project):
    before = provenance.source_sha256(VALIDATOR), provenance.project_sha256()
    _edit(project / "serving" / "gateway.py")
    _edit(project / "ops" / "lineage.py")
    after = provenance.source_sha256(VALIDATOR), provenance.project_sha256()
    assert after[0] == before[0]
    assert after[1] != before[1]  # the identical-rerun check sees every project module
