"""Pure status helpers: metav1.Conditions, phase transitions, node counts and trainer progress.

Who uses it and why it exists: :mod:`controller.reconcile` builds the job's next status with
these functions. A condition's ``lastTransitionTime`` changes only when its ``status`` flips, and
nothing here reads the clock (``now`` is passed in), so a pass over an unchanged world yields a
status equal to the stored one and the shell writes nothing.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from kubeclip.api import Phase, Reason, read_termination_message

from .times import rfc3339

#: For each phase: the condition it sets True, and the conditions it turns False if present.
_PHASE_CONDITIONS: dict[Phase, tuple[Phase, tuple[Phase, ...]]] = {
    Phase.QUEUED: (Phase.QUEUED, (Phase.RUNNING, Phase.RESTARTING)),
    Phase.CREATED: (Phase.CREATED, ()),
    Phase.RUNNING: (Phase.RUNNING, (Phase.RESTARTING, Phase.SUSPENDED)),
    Phase.RESTARTING: (Phase.RESTARTING, (Phase.RUNNING,)),
    Phase.SUSPENDED: (Phase.SUSPENDED, (Phase.RUNNING, Phase.RESTARTING)),
    Phase.SUCCEEDED: (Phase.SUCCEEDED, (Phase.RUNNING, Phase.RESTARTING)),
    Phase.FAILED: (Phase.FAILED, (Phase.RUNNING, Phase.RESTARTING)),
}


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """Return a new list with condition ``type_`` set; its transition time moves only on a flip."""
    type_, reason = str(type_), str(reason)  # plain strings in the status, not enum members
    out = [dict(c) for c in conditions]
    old = next((c for c in out if c.get("type") == type_), None)
    new = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": old["lastTransitionTime"] if old and old.get("status") == status else rfc3339(now),
    }
    if generation is not None:
        new["observedGeneration"] = generation
    if old is None:
        out.append(new)
    else:
        out[out.index(old)] = new
    return out


def enter_phase(
    status: dict[str, Any], phase: Phase, reason: str, message: str, generation: int | None, now: datetime
) -> dict[str, Any]:
    """The status after moving to ``phase`` (conditions updated; other fields untouched)."""
    out = dict(status)
    out["phase"], out["reason"], out["message"] = str(phase), str(reason), message
    conds = list(status.get("conditions") or [])
    true_type, false_types = _PHASE_CONDITIONS[phase]
    conds = set_condition(conds, true_type, "True", reason, message, generation, now)
    for t in false_types:
        if any(c.get("type") == t and c.get("status") == "True" for c in conds):
            conds = set_condition(conds, t, "False", reason, message, generation, now)
    out["conditions"] = conds
    return out


def resume(status: dict[str, Any], generation: int | None, now: datetime) -> dict[str, Any]:
    """Leaving Suspended: the Suspended condition goes False and the job is Created again."""
    conds = set_condition(
        status.get("conditions") or [],
        Phase.SUSPENDED,
        "False",
        Reason.RESUMED,
        "runPolicy.suspend is false",
        generation,
        now,
    )
    return enter_phase(
        {**status, "conditions": conds},
        Phase.CREATED,
        Reason.RESUMED,
        "pods recreated after suspension",
        generation,
        now,
    )


class PodPhase(StrEnum):
    """A pod's ``status.phase`` (Kubernetes' vocabulary, not the job's :class:`Phase`)."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNKNOWN = "Unknown"


def pod_phase(pod: dict[str, Any]) -> str:
    return (pod.get("status") or {}).get("phase") or PodPhase.PENDING


def node_counts(total: int, pods: list[dict[str, Any]]) -> dict[str, int]:
    phases = [pod_phase(p) for p in pods]
    return {
        "total": total,
        "pending": phases.count(PodPhase.PENDING),
        "running": phases.count(PodPhase.RUNNING),
        "succeeded": phases.count(PodPhase.SUCCEEDED),
        "failed": phases.count(PodPhase.FAILED) + phases.count(PodPhase.UNKNOWN),
    }


def _number(value: Any) -> float | None:
    return round(float(value), 4) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def termination_text(terminated: dict[str, Any] | None) -> str:
    """The human part of a terminated container's message (without the trainer's progress line)."""
    return read_termination_message((terminated or {}).get("message")).text


def final_progress(terminated: dict[str, Any] | None) -> dict[str, Any] | None:
    """The trainer's final ``Progress`` JSON from node 0's termination message (docs/contracts.md,
    "Progress"), or None when the message carries none (absent, malformed, another writer's)."""
    progress = read_termination_message((terminated or {}).get("message")).progress
    return None if progress is None else progress.model_dump(mode="json", exclude_unset=True)


def completed_message(name: str, terminated: dict[str, Any] | None) -> str:
    """The Succeeded message: the trainer's own summary (its termination message) when it left one."""
    detail = termination_text(terminated)
    return f"{name} completed" + (f": {detail}" if detail else "")


def progress_status(progress: dict[str, Any]) -> dict[str, Any]:
    """Map the trainer's ``kubeclip.api.Progress`` JSON onto ``status.progress``."""
    out: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        if value is not None:
            out[key] = value

    put("phase", progress.get("phase"))
    epoch, epochs = progress.get("epoch"), progress.get("epochs")
    step, total = progress.get("step"), progress.get("totalSteps")
    put("epoch", epoch)
    put("epochs", epochs)
    put("step", step)
    put("totalSteps", total)
    if isinstance(step, int) and isinstance(total, int) and total > 0:
        out["percent"] = min(100, int(100 * step / total))
        out["summary"] = f"epoch {epoch}/{epochs} step {step}/{total}"
    loss = progress.get("loss")
    put("loss", round(float(loss), 4) if isinstance(loss, (int, float)) else None)
    sps = progress.get("samplesPerSecond")
    put("samplesPerSecond", round(float(sps), 1) if isinstance(sps, (int, float)) else None)
    r1 = _number((progress.get("eval") or {}).get("image_to_text_R@1"))
    base = _number((progress.get("baseline") or {}).get("image_to_text_R@1"))
    put("recallAt1", r1)
    put("recallAt1Baseline", base)
    put("recallAt1Gain", round(r1 - base, 4) if r1 is not None and base is not None else None)
    ret = _number((progress.get("retention") or {}).get("image_to_text_R@1"))
    ret_base = _number((progress.get("retentionBaseline") or {}).get("image_to_text_R@1"))
    put("retentionRecallAt1", ret)
    put("retentionRecallAt1Baseline", ret_base)
    put("retentionDrop", round(ret_base - ret, 4) if ret is not None and ret_base is not None else None)
    put("zeroShotTop1", _number((progress.get("zeroShot") or {}).get("top1")))
    put("zeroShotTop1Baseline", _number((progress.get("zeroShotBaseline") or {}).get("top1")))
    eta = progress.get("etaSeconds")
    put("etaSeconds", int(eta) if isinstance(eta, (int, float)) else None)
    ckpt = progress.get("lastCheckpoint") or {}
    put("lastCheckpoint", ckpt.get("path"))
    put("lastCheckpointStep", ckpt.get("step"))
    skipped = progress.get("skippedCheckpoints")
    if isinstance(skipped, list) and skipped:
        out["skippedCheckpoints"] = [str(x)[:300] for x in skipped[:10]]
    updated = progress.get("updatedAt")
    if isinstance(updated, (int, float)) and updated > 0:
        out["updatedAt"] = rfc3339(datetime.fromtimestamp(updated, timezone.utc))
    return out
