"""The FineTuneJob ``status``: phase, metav1.Conditions, node counts, the trainer's progress.

Who uses it: ``controller/crd.py`` (the status schema), ``controller/status.py`` and
``controller/reconcile.py`` (which build it).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Phase(StrEnum):
    """``status.phase``; each phase also sets the condition of the same type."""

    QUEUED = "Queued"
    CREATED = "Created"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})
#: The condition (beside one per phase) that says why the current attempt's pods are not all
#: running yet: an image that cannot be pulled, no node that fits, a pod the API server refused.
PODS_WAITING = "PodsWaiting"


class _Status(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Condition(_Status):
    """metav1.Condition."""

    type: str = Field(description="Queued, Created, Running, Restarting, Succeeded, Failed, Suspended or PodsWaiting.")
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(description="CamelCase machine-readable reason.")
    message: str = Field(default="", description="Human-readable details.")
    lastTransitionTime: str = Field(description="When status last changed (RFC 3339).")
    observedGeneration: int | None = Field(default=None, description="metadata.generation the condition is based on.")


class NodeCounts(_Status):
    total: int = Field(default=0, description="spec.numNodes.")
    pending: int = Field(default=0, description="Pods not yet running.")
    running: int = Field(default=0, description="Pods running.")
    succeeded: int = Field(default=0, description="Pods that exited 0.")
    failed: int = Field(default=0, description="Pods that failed.")


class ProgressStatus(_Status):
    """The trainer's progress, read from node 0's /progress endpoint."""

    phase: str | None = Field(
        default=None, description="Trainer phase (starting, training, evaluating, exporting, done, failed)."
    )
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    totalSteps: int | None = None
    percent: int | None = Field(default=None, description="step / totalSteps in percent.")
    summary: str | None = Field(default=None, description="e.g. 'epoch 2/5 step 120/600'.")
    loss: float | None = None
    samplesPerSecond: float | None = None
    recallAt1: float | None = Field(default=None, description="Latest eval image-to-text R@1.")
    recallAt1Baseline: float | None = Field(default=None, description="Image-to-text R@1 of the start model (step 0).")
    recallAt1Gain: float | None = Field(
        default=None, description="recallAt1 - recallAt1Baseline: what fine-tuning gained."
    )
    retentionRecallAt1: float | None = Field(
        default=None, description="Latest image-to-text R@1 on spec.evaluation.retentionCsv."
    )
    retentionRecallAt1Baseline: float | None = Field(default=None, description="Retention R@1 of the start model.")
    retentionDrop: float | None = Field(
        default=None, description="retentionRecallAt1Baseline - retentionRecallAt1: what fine-tuning forgot."
    )
    zeroShotTop1: float | None = Field(
        default=None, description="Latest zero-shot top-1 accuracy (spec.evaluation.zeroShot)."
    )
    zeroShotTop1Baseline: float | None = Field(default=None, description="Zero-shot top-1 accuracy of the start model.")
    etaSeconds: int | None = None
    lastCheckpoint: str | None = Field(default=None, description="Path of the latest checkpoint.")
    lastCheckpointStep: int | None = None
    skippedCheckpoints: list[str] = Field(
        default_factory=list, description="Unreadable checkpoints the trainer resumed past (a Warning event each time)."
    )
    updatedAt: str | None = Field(default=None, description="When the trainer reported this (RFC 3339).")


class QueueStatus(_Status):
    """Where a job labelled kueue.x-k8s.io/queue-name stands in Kueue."""

    localQueue: str | None = Field(default=None, description="The LocalQueue the job asked for (its label).")
    workload: str | None = Field(default=None, description="The job's kueue.x-k8s.io Workload.")
    clusterQueue: str | None = Field(default=None, description="The ClusterQueue that admitted it, while admitted.")
    pending: str | None = Field(
        default=None, description="While Queued: why Kueue has not admitted it (Kueue's own message)."
    )


class FineTuneJobStatus(_Status):
    phase: Phase | None = Field(
        default=None,
        description="Queued (waiting for Kueue to admit it), Created, Running, Restarting, Succeeded, Failed or Suspended.",
    )
    reason: str | None = Field(default=None, description="Reason of the latest phase transition.")
    message: str | None = Field(default=None, description="Message of the latest phase transition.")
    conditions: list[Condition] = Field(default_factory=list, description="metav1.Conditions, one per type.")
    observedGeneration: int | None = Field(default=None, description="metadata.generation last reconciled.")
    nodes: NodeCounts | None = Field(default=None, description="Pod counts of the current attempt.")
    restartCount: int = Field(
        default=0, description="Restarts so far (failed plus disrupted attempts); the attempt number of the pods."
    )
    failedAttempts: int = Field(
        default=0, description="Restarts after failed attempts; never above runPolicy.backoffLimit."
    )
    disruptedAttempts: int = Field(
        default=0, description="Restarts after disruptions; never above runPolicy.disruptionLimit."
    )
    nextAttemptTime: str | None = Field(
        default=None,
        description="Restarting: the next attempt's pods are created at this time (exponential delay, RFC 3339).",
    )
    startTime: str | None = Field(default=None, description="When the pods were first created (RFC 3339).")
    attemptStartTime: str | None = Field(
        default=None,
        description="When the current attempt's pods were first created (RFC 3339); "
        "runPolicy.startDeadlineSeconds counts from it.",
    )
    completionTime: str | None = Field(default=None, description="When the job succeeded or failed (RFC 3339).")
    progress: ProgressStatus | None = Field(default=None, description="The trainer's progress.")
    queue: QueueStatus | None = Field(
        default=None, description="Kueue admission (jobs with kueue.x-k8s.io/queue-name)."
    )


class Reason(StrEnum):
    """The ``reason`` of the job's conditions and events: the trainer's final verdicts (one per exit
    code of :data:`kubeclip.api.contracts.FINAL_EXIT_CODES`) and those the controller itself sets;
    beside them the pods' own reasons such as ``Evicted``, ``ImagePullBackOff`` or ``Unschedulable``,
    which it passes through."""

    #: The trainer's final verdicts, by exit code (:data:`kubeclip.api.contracts.FINAL_EXIT_CODES`).
    INVALID_CONFIG = "InvalidConfig"
    PREFLIGHT_FAILED = "PreflightFailed"
    NON_FINITE_LOSS = "NonFiniteLoss"
    CHECKPOINT_MISMATCH = "CheckpointMismatch"
    OUTPUT_IN_USE = "OutputInUse"
    CHECKPOINT_UNREADABLE = "CheckpointUnreadable"
    DATA_ERROR = "DataError"
    #: The controller's own.
    CREATED = "Created"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
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
    #: A child object the API server refused to create (quota, Pod Security, admission webhook).
    POD_CREATE_FAILED = "PodCreateFailed"
    #: Pods not all running within runPolicy.startDeadlineSeconds, no more specific cause known.
    START_DEADLINE_EXCEEDED = "StartDeadlineExceeded"
    #: The PodsWaiting condition turned False: nothing holds the pods back any more.
    PODS_STARTED = "PodsStarted"
    QUEUED = "Queued"
    ADMITTED = "Admitted"
    QUEUE_UNAVAILABLE = "KueueNotInstalled"
    QUEUE_PRIORITY_CLASS_MISSING = "PriorityClassNotFound"
