"""The layering rules of DESIGN.md: light modules stay light, and import-linter holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAVY = ["torch", "torchvision", "pytorch_lightning", "lightning", "mlflow", "ray"]


@pytest.mark.parametrize("module", ["training", "training.spec", "training.errors"])
def test_light_modules_import_no_heavy_stack(module, loaded_modules):
    loaded = loaded_modules(
        f"import {module}, training.spec\n"
        "spec = training.spec.build_spec(overrides={'epochs': 2})"
    )
    assert "training" in loaded and "pydantic" in loaded  # the probe did import something
    assert not loaded & set(HEAVY), f"importing {module} pulled in {sorted(loaded & set(HEAVY))}"


def test_import_linter_contracts_hold():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), "import-linter is not installed next to this interpreter"
    proc = subprocess.run([str(lint_imports)], capture_output=True, text=True, timeout=300,
                          cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "broken" in proc.stdout and " 0 broken" in proc.stdout
