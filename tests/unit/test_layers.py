"""The layers hold: ground <- probes <- coalescer <- updater <- kdump_coalesce.

``lint-imports`` (import-linter, contracts in pyproject.toml) runs in
``./bootstrap test`` and here; this module also checks what import-linter
cannot say: no package reaches into another package's private modules
(``from probes._sysfs import ...``, ``from probes import _sysfs``), so a stage
depends on the public surface of the ones below it only.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("ground", "probes", "coalescer", "updater", "kdump_coalesce")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name, []) for a in node.names)
    return out


def private_reaches(root: Path) -> list[str]:
    bad = []
    for package in SHIPPED:
        for path in sorted((root / package).rglob("*.py")):
            for line, module, names in _imports(path):
                top = module.split(".")[0]
                if top not in SHIPPED or top == package:
                    continue
                parts = module.split(".")[1:] + [n for n in names if n.startswith("_")]
                if any(p.startswith("_") for p in parts):
                    bad.append(f"{path.relative_to(root)}:{line}: {module} {names}")
    return bad


def test_no_package_imports_another_packages_private_modules() -> None:
    assert private_reaches(ROOT) == []


def test_the_private_import_check_can_fail(tmp_path: Path) -> None:
    for package in SHIPPED:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "updater" / "x.py").write_text("from probes._sysfs import cpus_online\nfrom probes import _btf\n")
    assert [b.split(": ", 1)[0] for b in private_reaches(tmp_path)] == ["updater/x.py:1", "updater/x.py:2"]


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (pip install -e '.[dev]')")
def test_import_contracts_are_kept() -> None:
    result = subprocess.run([str(LINT_IMPORTS)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (pip install -e '.[dev]')")
def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    for package in SHIPPED:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / "ground" / "ranges.py").open("a") as f:
        f.write("\nimport updater  # an upward import\n")
    result = subprocess.run([str(LINT_IMPORTS)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)})
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout + result.stderr
