"""A crashing run says why where people look: ``kubeclip run``'s console and the pod's termination message.

The crash is real: ``spec.model.pretrained`` names a file that exists (so the preflight passes)
but holds no weights; every rank raises while loading it, an exception that is none of the
trainer's one-line verdicts. Before trainer/failure.py ``kubeclip run`` printed ``training failed
(exit 1); process logs under ...`` and its log-tail fallback found no log (torchrun appends a
random suffix to the run's log directory), and the pod's termination log stayed empty.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_trainer_node import pod_env
from trainer_helpers import REPO, VENV_BIN, env, manifest

pytestmark = pytest.mark.slow

#: What the rank's traceback ends with (torch's weights-only unpickler on a text file).
ERROR = "IndexError: pop from empty list"


def crashing_job(tmp_path):
    job = manifest(tmp_path, "crash", tmp_path / "out", training={"epochs": 1, "batchSize": 8, "workers": 0})
    bad = tmp_path / "weights.pt"
    bad.write_text("this is not a weights file\n")
    doc = yaml.safe_load(job.read_text())
    doc["spec"]["model"]["pretrained"] = str(bad)
    job.write_text(yaml.safe_dump(doc))
    return job


def test_kubeclip_run_prints_the_failing_ranks_error_on_the_console(tmp_path):
    job = crashing_job(tmp_path)
    proc = subprocess.run(
        [str(VENV_BIN / "kubeclip"), "run", str(job)], capture_output=True, text=True, env=env(), timeout=600
    )
    assert proc.returncode == 1, proc.stderr[-4000:]
    lines = proc.stderr.splitlines()
    # the traceback's last line, the frames just above it, and the one-line summary
    assert ERROR in lines, proc.stderr[-4000:]
    at = lines.index(ERROR)
    assert any(x.strip().startswith('File "') for x in lines[max(0, at - 8) : at]), lines[max(0, at - 8) : at]
    summary = [x for x in lines if x.startswith("rank ") and " failed: " in x]
    assert summary, summary
    assert f"failed: {ERROR} (_weights_only_unpickler.py:" in summary[0], summary
    where = [x.split("process logs under ", 1)[1] for x in lines if "training failed (exit 1); process logs under" in x]
    assert where, where
    assert (Path(where[0]) / "attempt_0").is_dir(), where  # the real directory (torchrun adds a suffix)


def test_the_pod_termination_message_carries_the_failing_ranks_error(tmp_path):
    job = crashing_job(tmp_path)
    termination_log = tmp_path / "termination-log"
    termination_log.touch()
    e = pod_env(2)
    e["KUBECLIP_TERMINATION_LOG"] = str(termination_log)
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.node", str(job)], capture_output=True, text=True, env=e, cwd=REPO, timeout=600
    )
    assert proc.returncode == 1, proc.stderr[-4000:]
    message = termination_log.read_text()
    assert len(message.splitlines()) == 1, message
    assert message.startswith(("rank 0 failed: ", "rank 1 failed: ")), message
    assert f"failed: {ERROR} (" in message, message
