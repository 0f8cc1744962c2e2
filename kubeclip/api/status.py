"""The FineTuneJob ``status``: phase, metav1.Conditions, node counts, the trainer's progress.

Who uses it: ``controller/crd.py`` (the status schema), ``controller/status.py`` and
``controller/reconcile.py`` (which build it).
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

Phase = Literal["Created", "Running", "Restarting", "Succeeded", "Failed", "Suspended"]
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


class _Status(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Condition(_Status):
    """metav1.Condition."""

    type: str = Field(description="Created, Running, Restarting, Succeeded, Failed or Suspended.")
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(description="CamelCase machine-readable reason.")
    message: str = Field(default="", description="Human-readable details.")
    lastTransitionTime: str = Field(description="When status last changed (RFC 3339).")
    observedGeneration: Optional[int] = Field(default=None, description="metadata.generation the condition is based on.")


class NodeCounts(_Status):
    total: int = Field(default=0, description="spec.numNodes.")
    pending: int = Field(default=0, description="Pods not yet running.")
    running: int = Field(default=0, description="Pods running.")
    succeeded: int = Field(default=0, description="Pods that exited 0.")
    failed: int = Field(default=0, description="Pods that failed.")


class ProgressStatus(_Status):
    """The trainer's progress, read from node 0's /progress endpoint."""

    phase: Optional[str] = Field(default=None, description="Trainer phase (starting, training, evaluating, exporting, done, failed).")
    epoch: Optional[int] = None
    epochs: Optional[int] = None
    step: Optional[int] = None
    totalSteps: Optional[int] = None
    percent: Optional[int] = Field(default=None, description="step / totalSteps in percent.")
    summary: Optional[str] = Field(default=None, description="e.g. 'epoch 2/5 step 120/600'.")
    loss: Optional[float] = None
    samplesPerSecond: Optional[float] = None
    recallAt1: Optional[float] = Field(default=None, description="Latest eval image-to-text R@1.")
    recallAt1Baseline: Optional[float] = Field(default=None, description="Image-to-text R@1 of the start model (step 0).")
    recallAt1Gain: Optional[float] = Field(default=None, description="recallAt1 - recallAt1Baseline: what fine-tuning gained.")
    retentionRecallAt1: Optional[float] = Field(default=None, description="Latest image-to-text R@1 on spec.evaluation.retentionCsv.")
    retentionRecallAt1Baseline: Optional[float] = Field(default=None, description="Retention R@1 of the start model.")
    retentionDrop: Optional[float] = Field(
        default=None, description="retentionRecallAt1Baseline - retentionRecallAt1: what fine-tuning forgot."
    )
    zeroShotTop1: Optional[float] = Field(default=None, description="Latest zero-shot top-1 accuracy (spec.evaluation.zeroShot).")
    zeroShotTop1Baseline: Optional[float] = Field(default=None, description="Zero-shot top-1 accuracy of the start model.")
    etaSeconds: Optional[int] = None
    lastCheckpoint: Optional[str] = Field(default=None, description="Path of the latest checkpoint.")
    lastCheckpointStep: Optional[int] = None
    skippedCheckpoints: list[str] = Field(
        default_factory=list, description="Unreadable checkpoints the trainer resumed past (a Warning event each time)."
    )
    updatedAt: Optional[str] = Field(default=None, description="When the trainer reported this (RFC 3339).")


class FineTuneJobStatus(_Status):
    phase: Optional[Phase] = Field(default=None, description="Created, Running, Restarting, Succeeded, Failed or Suspended.")
    reason: Optional[str] = Field(default=None, description="Reason of the latest phase transition.")
    message: Optional[str] = Field(default=None, description="Message of the latest phase transition.")
    conditions: list[Condition] = Field(default_factory=list, description="metav1.Conditions, one per type.")
    observedGeneration: Optional[int] = Field(default=None, description="metadata.generation last reconciled.")
    nodes: Optional[NodeCounts] = Field(default=None, description="Pod counts of the current attempt.")
    restartCount: int = Field(default=0, description="Restarts so far (failed plus disrupted attempts); the attempt number of the pods.")
    failedAttempts: int = Field(default=0, description="Restarts after failed attempts; never above runPolicy.backoffLimit.")
    disruptedAttempts: int = Field(default=0, description="Restarts after disruptions; never above runPolicy.disruptionLimit.")
    nextAttemptTime: Optional[str] = Field(
        default=None, description="Restarting: the next attempt's pods are created at this time (exponential delay, RFC 3339)."
    )
    startTime: Optional[str] = Field(default=None, description="When the pods were first created (RFC 3339).")
    completionTime: Optional[str] = Field(default=None, description="When the job succeeded or failed (RFC 3339).")
    progress: Optional[ProgressStatus] = Field(default=None, description="The trainer's progress.")


class Reason:
    """The ``reason`` of the job's conditions and events that the controller itself sets (beside the
    trainer's verdicts in :data:`kubeclip.api.contracts.FINAL_EXIT_CODES` and the pods' own
    reasons such as ``Evicted`` or ``OOMKilled``, which it passes through)."""

    INVALID_SPEC = "InvalidSpec"
    RESUMED = "Resumed"
    DISRUPTED = "Disrupted"
    POD_DELETED = "PodDeleted"
    NODE_LOST = "NodeLost"
    POD_FAILED = "PodFailed"
    OOM_KILLED = "OOMKilled"
    KILLED = "Killed"
    RENDEZVOUS_TIMEOUT = "RendezvousTimeout"
    TRAINER_FAILED = "TrainerFailed"
    CHECKPOINT_FALLBACK = "CheckpointFallback"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    DISRUPTION_LIMIT_EXCEEDED = "DisruptionLimitExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
