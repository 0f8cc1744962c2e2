"""Who owns an output directory: one job's marker file, so two jobs never share checkpoints.

Who uses it: ``trainer.node`` (the pod entrypoint: node 0 claims, the other nodes check),
``trainer.launch`` (``kubeclip run``) and ``python -m trainer`` when neither ran before it (a bare
torchrun: rank 0 claims). All of them call it before any process writes a checkpoint.

Why it exists: without it two FineTuneJobs pointed at one ``output.path`` prune each other's
checkpoints, and a job re-applied under a new spec resumes (or, when the old run had finished,
re-exports) the old job's weights. The first run of a job writes ``<output>/.kubeclip-owner.json``
(its uid, namespace and name) with an exclusive create; a run whose uid differs from the marker's
ends with :class:`kubeclip.api.OutputInUse` (exit 7, final: one line naming the owner) and touches
nothing, unless ``spec.output.takeOver`` is set, which rewrites the marker on purpose.

The identity: in a pod, the FineTuneJob's ``metadata.uid`` (``KUBECLIP_JOB_UID``, set by the
controller), so a deleted and re-applied job is a new owner. Elsewhere (``kubeclip run``, a bare
torchrun) ``local:<job name>``: stable across reruns of one manifest, so a rerun resumes.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from kubeclip.api import OutputInUse

#: The marker's file name in the output directory.
MARKER = ".kubeclip-owner.json"
#: A marker larger than this is not one of ours (it is read whole).
_MAX_MARKER_BYTES = 4096


@dataclass(frozen=True)
class Owner:
    uid: str
    job: str
    namespace: str = ""

    def describe(self) -> str:
        name = f"{self.namespace}/{self.job}" if self.namespace else self.job
        return f"{name} (uid {self.uid})"


def identity(job: str, environ: dict | None = None) -> Owner:
    """This run's owner identity: the controller's ``KUBECLIP_JOB_UID``/``_JOB_NAME``/``_NAMESPACE``
    in a pod, else ``local:<job>`` (the manifest's ``metadata.name``)."""
    env = os.environ if environ is None else environ
    name = env.get("KUBECLIP_JOB_NAME") or job
    uid = env.get("KUBECLIP_JOB_UID") or f"local:{name}"
    return Owner(uid=uid[:128], job=name[:253], namespace=env.get("KUBECLIP_NAMESPACE", "")[:63])


def read(output: str | Path) -> Owner | None:
    """The marker's owner; None when there is no marker. Raises :class:`OutputInUse` for a marker
    that cannot be understood (refusing is safe: the user can remove it or take over)."""
    path = Path(output) / MARKER
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_MARKER_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise OutputInUse(f"output: cannot read the owner marker {path}: {err.strerror or err}") from None
    try:
        if len(raw) > _MAX_MARKER_BYTES:
            raise ValueError("too large")
        data = json.loads(raw.decode("utf-8"))
        return Owner(uid=str(data["uid"]), job=str(data["job"]), namespace=str(data.get("namespace", "")))
    except (ValueError, TypeError, KeyError):
        raise OutputInUse(
            f"output: the owner marker {path} is not readable; remove it or set spec.output.takeOver: true"
        ) from None


def _refusal(output: str | Path, other: Owner, me: Owner) -> OutputInUse:
    return OutputInUse(
        f"output: {output} belongs to job {other.describe()}, not this job {me.describe()}; use another "
        "spec.output.path, or set spec.output.takeOver: true to take it over"
    )


def _write_temp(d: Path, owner: Owner) -> Path:
    tmp = d / f".{MARKER}.tmp-{secrets.token_hex(8)}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(asdict(owner), f)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def claim(output: str | Path, owner: Owner, take_over: bool = False) -> Owner | None:
    """Make ``owner`` the owner of ``output`` (created if missing); return the previous owner when
    it was taken over, else None. Raises :class:`OutputInUse` when another job owns it and
    ``take_over`` is off. The first claim is an exclusive create (``link``: atomic on local and
    network filesystems), so of two jobs starting at once exactly one wins."""
    d = Path(output)
    d.mkdir(parents=True, exist_ok=True)
    marker = d / MARKER
    try:
        current = read(d)
    except OutputInUse:
        if not take_over:
            raise
        current = Owner(uid="unreadable", job="unreadable")
    if current is not None and current.uid == owner.uid:
        return None
    if current is not None and not take_over:
        raise _refusal(output, current, owner)
    tmp = _write_temp(d, owner)
    try:
        if current is None:
            try:
                os.link(tmp, marker)
            except FileExistsError:  # another job claimed it between our read and our create
                return claim(output, owner, take_over)
            return None
        os.replace(tmp, marker)
        return current
    finally:
        tmp.unlink(missing_ok=True)


def check(output: str | Path, owner: Owner) -> None:
    """Refuse an output another job owns, without claiming it (the nodes other than node 0)."""
    current = read(output)
    if current is not None and current.uid != owner.uid:
        raise _refusal(output, current, owner)
