"""The peer's own virtualenv: open_clip_train 3.3.0, pinned, apart from the project's environment.

Who uses it: ``hack/bench_trainer.py`` and ``hack/bench_gpu.py``.

``ensure(venv, wheels=None)`` returns the venv's python, creating it on first use:
  * ``python -m venv`` from the running interpreter, plus a ``.pth`` file naming the running
    interpreter's site-packages, so the peer runs on the same torch/torchvision build as
    kubeclip (no second torch download, and a fair comparison);
  * ``pip install open_clip_torch[training]==3.3.0``: from the package index, or with
    ``wheels`` (a folder of wheels, for machines without network) ``--no-index --no-deps`` of
    every wheel in it; what the peer needs beyond them must already be importable (checked by
    importing ``open_clip_train.main``, with a one-line error naming the missing module).
Its extras (transformers, webdataset...) stay out of the project's environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Optional

PEER = "open_clip_torch[training]==3.3.0"
CHECK = "import open_clip, open_clip_train.main; assert open_clip.__version__ == '3.3.0', open_clip.__version__"


def peer_env() -> dict:
    """Environment for the peer's processes: ours minus PYTHONPATH (the peer sees its venv only)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def ensure(venv: Path, wheels: Optional[Path] = None) -> Path:
    venv = Path(venv)
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([py, "-c", CHECK], env=peer_env(), capture_output=True).returncode == 0:
        return py
    print(f"[bench] creating the peer's venv {venv} ({PEER})", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "kubeclip-bench-base.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--disable-pip-version-check"]
    if wheels:
        files = sorted(str(p) for p in Path(wheels).glob("*.whl"))
        if not files:
            raise SystemExit(f"[bench] --wheels {wheels}: no .whl files there")
        subprocess.run([*pip, "--no-index", "--no-deps", *files], check=True)
    else:
        subprocess.run([*pip, PEER], check=True)
    check = subprocess.run([py, "-c", CHECK], env=peer_env(), capture_output=True, text=True)
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(f"[bench] the peer's venv {venv} cannot import open_clip_train: {last}")
    return py
