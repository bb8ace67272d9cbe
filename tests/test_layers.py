"""The package's floors only point down: import-linter's contracts in pyproject.toml, run for real.

The contracts count every import statement, function-level ones included; the second test shows it
on a copy of the package with one function-level import that runs up a floor.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_floors_point_down_and_the_core_imports_no_swift():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_a_function_level_import_up_a_floor_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "exgramed_plugin", tmp_path / "exgramed_plugin",
                    ignore=shutil.ignore_patterns("__pycache__", "recipes"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    graphs = tmp_path / "exgramed_plugin" / "alignment" / "graphs.py"
    graphs.write_text(graphs.read_text() + "\n\ndef _up():\n    from ..commands import cli  # noqa: F401\n")
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "exgramed_plugin.alignment.graphs -> exgramed_plugin.commands.cli" in result.stdout
    # the core now reaches transformers through the commands too
    assert "Contracts: 0 kept, 2 broken." in result.stdout
