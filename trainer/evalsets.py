"""The extra eval sets of a run: the retention CSV and the zero-shot CSV, read and checked.

Who uses it: ``trainer.preflight`` (``run_preflight`` and ``read_tables`` call :func:`read`, so a
bad retention or zero-shot CSV fails the preflight with one line, like a bad train/val CSV; the
preflight checks their images too), and ``trainer.forgetting`` (which evaluates the tables,
handed over in ``DatasetReport.eval_sets``). It imports no torch: the preflight runs before
torch is imported.

Both CSVs follow the training CSV's rules (separator detection, ``spec.dataset.root``, relative
paths against the CSV's directory, UTF-8, no empty cells) because they are read by the same
``trainer.table.read_table``. The retention CSV has the image and caption columns of the
dataset; the zero-shot CSV has the image column and ``spec.evaluation.zeroShot.labelColumn``.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubeclip.api import TrainerSpec
from trainer.table import PreflightError, Rows, read_table

RETENTION = "spec.evaluation.retentionCsv"
ZEROSHOT = "spec.evaluation.zeroShot.csv"


@dataclass(frozen=True)
class EvalTables:
    """The tables of the extra eval sets; each None when the spec has no such set."""

    retention: Rows | None = None
    zeroshot: Rows | None = None  #: ``captions`` holds the class name of each image

    def summary(self) -> str:
        parts = []
        if self.retention is not None:
            parts.append(f"retention {len(self.retention)} rows")
        if self.zeroshot is not None:
            parts.append(f"zero-shot {len(self.zeroshot)} images / {len(set(self.zeroshot.captions))} classes")
        return ", ".join(parts)


def _read_zeroshot(spec: TrainerSpec) -> Rows:
    zs = spec.evaluation.zeroShot
    if zs is None:
        raise ValueError("spec.evaluation.zeroShot is not set")
    # read_table reads the dataset's image and caption columns: here the caption is the label.
    as_labels = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"captionColumn": zs.labelColumn})})
    try:
        table = read_table(zs.csv, as_labels, ZEROSHOT)
    except PreflightError as err:  # name the key the user must change, not the dataset's
        raise PreflightError(
            str(err)
            .replace("spec.dataset.captionColumn", "spec.evaluation.zeroShot.labelColumn")
            .replace("imageColumn/captionColumn", "imageColumn / spec.evaluation.zeroShot.labelColumn")
        ) from None
    classes = sorted({str(c).strip() for c in table.captions})
    if len(classes) < 2:
        raise PreflightError(
            f"{ZEROSHOT} {table.csv}: {len(classes)} class in column '{zs.labelColumn}'; zero-shot "
            "classification needs at least 2"
        )
    return table


def read(spec: TrainerSpec) -> EvalTables:
    """Read and check the retention and zero-shot CSVs (their images: ``trainer.preflight``)."""
    ev = spec.evaluation
    retention = read_table(ev.retentionCsv, spec, RETENTION) if ev.retentionCsv else None
    zeroshot = _read_zeroshot(spec) if ev.zeroShot else None
    return EvalTables(retention=retention, zeroshot=zeroshot)
