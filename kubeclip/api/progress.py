"""The trainer's progress document: served by rank 0 at ``GET /progress`` and written to
``<output>/progress.json``; the controller copies it into ``status.progress``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LastCheckpoint(BaseModel):
    path: str
    step: int
    time: float = Field(description="Unix time the checkpoint was committed.")


class Progress(BaseModel):
    """Served by rank 0 at ``GET /progress`` (metrics port) and written to ``<output>/progress.json``."""

    model_config = ConfigDict(extra="ignore")

    phase: Literal["starting", "training", "evaluating", "exporting", "done", "failed"] = "starting"
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    totalSteps: int = 0
    loss: float | None = None
    learningRate: float | None = None
    samplesPerSecond: float | None = None
    etaSeconds: float | None = None
    eval: dict[str, float] = Field(default_factory=dict, description="Latest retrieval eval, e.g. image_to_text_R@1.")
    baseline: dict[str, float] = Field(default_factory=dict, description="The same eval of the start model (step 0).")
    retention: dict[str, float] = Field(
        default_factory=dict, description="Latest eval on spec.evaluation.retentionCsv."
    )
    retentionBaseline: dict[str, float] = Field(default_factory=dict, description="Retention eval of the start model.")
    zeroShot: dict[str, float] = Field(default_factory=dict, description="Latest zero-shot accuracy (top1, top5).")
    zeroShotBaseline: dict[str, float] = Field(
        default_factory=dict, description="Zero-shot accuracy of the start model."
    )
    lastCheckpoint: LastCheckpoint | None = None
    metricsPort: int | None = Field(default=None, description="Port rank 0 serves /metrics and /progress on.")
    modelPath: str | None = Field(default=None, description="Where the exported model went (phase done).")
    skippedCheckpoints: list[str] = Field(
        default_factory=list, description="Checkpoints this run could not read and resumed past ('name: reason')."
    )
    updatedAt: float = 0.0
    message: str = ""
