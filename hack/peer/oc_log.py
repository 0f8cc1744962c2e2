"""Read open_clip_train's per-step log lines (``--log-every-n-steps 1``) into numbers.

Who uses it: ``hack/bench_trainer.py`` and ``hack/bench_gpu.py``, to put open_clip_train's
throughput and data wait next to kubeclip's.

With one line per step, each line's ``Data (t)`` and ``Batch (t)`` are that step's seconds
(open_clip_train resets its meters after every log line); ``Batch (t)`` is the wall time from
the end of the previous step to the end of this one, data wait included. The ``N/s`` figure on
the line is 1/last batch time, so it is not used.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

STEP = re.compile(
    r"Train Epoch: (?P<epoch>\d+) \[\s*(?P<seen>\d+)/(?P<total>\d+) \(\s*\d+%\)\] "
    r"Data \(t\): (?P<data>[\d.]+) Batch \(t\): (?P<batch>[\d.]+),.*? Loss: (?P<loss>[\d.]+)"
)


def steps(out_log: Path) -> list[dict]:
    """Every step line of ``LOGS/NAME/out.log``, in order."""
    rows = []
    for line in Path(out_log).read_text(errors="replace").splitlines():
        m = STEP.search(line)
        if m:
            rows.append(
                {
                    "epoch": int(m["epoch"]),
                    "seen": int(m["seen"]),
                    "data_s": float(m["data"]),
                    "step_s": float(m["batch"]),
                    "loss": float(m["loss"]),
                }
            )
    return rows


def params(run_dir: Path) -> dict:
    """``params.txt`` (``key: value`` per line) as strings."""
    out = {}
    for line in (Path(run_dir) / "params.txt").read_text().splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def final_val_loss(run_dir: Path):
    f = Path(run_dir) / "checkpoints" / "results.jsonl"
    if not f.exists():
        return None
    rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    return round(rows[-1]["clip_val_loss"], 4) if rows and "clip_val_loss" in rows[-1] else None
