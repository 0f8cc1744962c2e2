"""The peer's own environment: open_clip_train 3.3.0, pinned, apart from the project's environment.

Who uses it: ``hack/bench_trainer.py`` and ``hack/bench_gpu.py``.

``ensure(folder, wheels=None)`` returns ``(python, env)`` to run the peer with, creating it on
first use. Either way the peer runs on the same torch/torchvision build as kubeclip (no second
torch download, and a fair comparison), and its extras (transformers, webdataset...) stay out of
the project's environment:
  * from the package index: a virtualenv ``folder/venv`` made from the running interpreter, with
    a ``.pth`` file naming the running interpreter's site-packages, then
    ``pip install open_clip_torch[training]==3.3.0`` into it (pip installs only what is missing);
  * with ``wheels`` (a folder of wheels, for machines without network): every wheel in it
    installed ``--no-deps`` into ``folder/site``, which the peer's processes get as
    ``PYTHONPATH``; what the peer needs beyond them must already be importable by the running
    interpreter.
Then ``import open_clip_train.main`` is checked; failure is one line naming the missing module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

PEER = "open_clip_torch[training]==3.3.0"
CHECK = "import open_clip, open_clip_train.main; assert open_clip.__version__ == '3.3.0', open_clip.__version__"


def _base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the peer sees its own packages only
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def _works(py: Path, env: dict) -> bool:
    return py.exists() and subprocess.run([py, "-c", CHECK], env=env, capture_output=True).returncode == 0


def ensure(folder: Path, wheels: Path | None = None) -> tuple[Path, dict]:
    folder = Path(folder)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if wheels:
        site = folder / "site"
        env = dict(_base_env(), PYTHONPATH=str(site))
        py = Path(sys.executable)
        if _works(py, env):
            return py, env
        files = sorted(str(p) for p in Path(wheels).glob("*.whl"))
        if not files:
            raise SystemExit(f"[bench] --wheels {wheels}: no .whl files there")
        print(f"[bench] installing the peer from {wheels} into {site}", file=sys.stderr)
        shutil.rmtree(site, ignore_errors=True)
        subprocess.run([*pip, "--no-index", "--no-deps", "--no-compile", "--target", str(site), *files], check=True)
    else:
        venv = folder / "venv"
        env = _base_env()
        py = venv / "bin" / "python"
        if _works(py, env):
            return py, env
        print(f"[bench] creating the peer's venv {venv} ({PEER})", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        site = subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        Path(site, "kubeclip-bench-base.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        subprocess.run([*pip[:3], "--python", str(py), *pip[3:], PEER], check=True)
    check = subprocess.run([py, "-c", CHECK], env=env, capture_output=True, text=True)
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(f"[bench] the peer (open_clip_train) cannot be imported: {last}")
    return py, env
