"""The layering STYLE.md asks for, checked by import-linter on every test run.

Contracts live in pyproject.toml (``[tool.importlinter]``): the trainer never imports the
controller; the controller uses only the trainer's config model; the pure controller modules
(plan, builders, status) import neither kopf nor kubernetes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout and "KEPT" in proc.stdout
