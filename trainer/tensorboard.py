"""TensorBoard event files of a run (``spec.output.tensorboard: true``), written by rank 0.

Who uses it: ``trainer.metrics.TrainerMetrics`` (every figure it publishes to Prometheus and
``/progress`` also goes here, at the run's optimizer step). The files go to
``<output>/tensorboard/``, one event file per process start, so a resumed run adds a file and
TensorBoard shows one continuous curve: ``tensorboard --logdir <output>/tensorboard``.

Tags (the names a guide following open_clip_train's ``--report-to tensorboard`` expects, grouped):

* ``train/loss``, ``train/lr``, ``train/samples_per_second`` — at every progress update;
* ``val/<metric>``, ``retention/<metric>`` — recalls, mean ranks and loss at each eval;
  ``baseline/val/<metric>``, ``baseline/retention/<metric>`` — the start model (step 0);
* ``zeroshot/top1``, ``zeroshot/top5`` and ``baseline/zeroshot/...``.

Writing never fails a run: an unwritable directory logs one warning and turns the board off.
"""

from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("trainer")

#: Seconds between flushes of the event file (TensorBoard's default is 120).
FLUSH_SECS = 10


class Board:
    """A ``SummaryWriter`` under ``<output>/tensorboard`` with the loop's scalars."""

    def __init__(self, output: str):
        self.dir = Path(output) / "tensorboard"
        self.writer: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.dir), flush_secs=FLUSH_SECS)
        except (ImportError, OSError) as err:  # no tensorboard package, read-only output
            log.warning("spec.output.tensorboard: cannot write event files to %s: %s", self.dir, err)
            return
        atexit.register(self.close)  # a preempted or failed run keeps what it logged

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/{name}" if prefix else name, float(value), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
