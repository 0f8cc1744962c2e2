"""The trainer's progress document: served by rank 0 at ``GET /progress`` and written to
``<output>/progress.json``; the controller copies it into ``status.progress``.

The document comes from the trainer image, which is the job author's: the controller validates
what node 0 answers with :class:`Progress` before anything of it reaches ``status.progress``
(controller/progress.py). So every number here is finite and within a range the status (int64s,
RFC 3339 times) can hold, and every string, list and map has a bound. Strings and lists longer
than their bound are cut rather than refused (the trainer's own error lines can be long); maps
with more entries, or longer keys, than any trainer writes are refused. The trainer builds the
document with this model too (``trainer.metrics``); ``model_copy(update=...)`` does not validate,
so what it serves is checked here, on the reading side.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

#: Integers (steps, epochs) and plain numbers stay within 2**53: exact in JSON, within int64.
NUMBER_LIMIT = 2**53
#: ``updatedAt`` and checkpoint times: Unix seconds before the year 3000 (a datetime can hold them).
TIME_LIMIT = 32_503_680_000.0
#: Longest string kept (paths, the message, a skipped checkpoint's reason); longer ones are cut.
STRING_MAX = 1024
#: Most entries of a list kept (``skippedCheckpoints``); further ones are dropped.
LIST_MAX = 32
#: Most entries of an eval map, and the longest key: the trainer writes about 14 short keys.
MAP_MAX = 64
MAP_KEY_MAX = 64


def _cut_string(value: Any) -> Any:
    return value[: STRING_MAX - 3] + "..." if isinstance(value, str) and len(value) > STRING_MAX else value


def _cut_list(value: Any) -> Any:
    return value[:LIST_MAX] if isinstance(value, list) else value


Text = Annotated[str, BeforeValidator(_cut_string)]
Count = Annotated[int, Field(ge=0, le=NUMBER_LIMIT)]
Number = Annotated[float, Field(allow_inf_nan=False, ge=-NUMBER_LIMIT, le=NUMBER_LIMIT)]
Seconds = Annotated[float, Field(allow_inf_nan=False, ge=0, le=TIME_LIMIT)]
Figures = Annotated[
    dict[Annotated[str, StringConstraints(max_length=MAP_KEY_MAX)], Number],
    Field(max_length=MAP_MAX),
]


class LastCheckpoint(BaseModel):
    path: Text
    step: Count
    time: Seconds = Field(description="Unix time the checkpoint was committed.")


class Progress(BaseModel):
    """Served by rank 0 at ``GET /progress`` (metrics port) and written to ``<output>/progress.json``."""

    model_config = ConfigDict(extra="ignore")

    phase: Literal["starting", "training", "evaluating", "exporting", "done", "failed"] = "starting"
    epoch: Count = 0
    epochs: Count = 0
    step: Count = 0
    totalSteps: Count = 0
    loss: Number | None = None
    learningRate: Number | None = None
    samplesPerSecond: Number | None = None
    etaSeconds: Seconds | None = None
    eval: Figures = Field(default_factory=dict, description="Latest retrieval eval, e.g. image_to_text_R@1.")
    baseline: Figures = Field(default_factory=dict, description="The same eval of the start model (step 0).")
    retention: Figures = Field(default_factory=dict, description="Latest eval on spec.evaluation.retentionCsv.")
    retentionBaseline: Figures = Field(default_factory=dict, description="Retention eval of the start model.")
    zeroShot: Figures = Field(default_factory=dict, description="Latest zero-shot accuracy (top1, top5).")
    zeroShotBaseline: Figures = Field(default_factory=dict, description="Zero-shot accuracy of the start model.")
    lastCheckpoint: LastCheckpoint | None = None
    metricsPort: int | None = Field(
        default=None, ge=1, le=65535, description="Port rank 0 serves /metrics and /progress on."
    )
    modelPath: Text | None = Field(default=None, description="Where the exported model went (phase done).")
    skippedCheckpoints: Annotated[list[Text], BeforeValidator(_cut_list)] = Field(
        default_factory=list, description="Checkpoints this run could not read and resumed past ('name: reason')."
    )
    updatedAt: Seconds = 0.0
    message: Text = ""
