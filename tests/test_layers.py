"""The layer contracts of pyproject.toml ([tool.importlinter]) hold for the package as it ships.

import-linter reads a package from one folder, while the package-dir mapping spreads govrisk over
several top-level folders; so the test lays the package out as the wheel does (from the mapping
itself, so it cannot drift) and lints that copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def stage_package(dest: Path) -> Path:
    """Copy every package's .py files to `dest` as the wheel lays them out; returns `dest`."""
    tool = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = tool.get("package-dir", {})
    for package in tool["packages"]:
        src = REPO_ROOT / mapping.get(package, package.replace(".", "/"))
        target = dest / package.replace(".", "/")
        target.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.py"):
            shutil.copy2(f, target / f.name)
    return dest


def lint(staged: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(staged)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO_ROOT / "pyproject.toml"), "--no-cache"],
        cwd=staged,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_layer_contracts_hold(tmp_path: Path) -> None:
    result = lint(stage_package(tmp_path / "site"))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("govrisk/serving/engine.py", "import torch", "serving runs ONNX"),
        ("govrisk/data/store.py", "from govrisk.research import stats", "core -> data"),
        ("govrisk/core/rating.py", "from govrisk.serving import config", "core -> data"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    staged = stage_package(tmp_path / "site")
    path = staged / module
    path.write_text(path.read_text() + f"\n{line}  # injected by the test\n")
    result = lint(staged)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and contract in result.stdout
