"""The whole FineTuneJob ``spec``: the trainer's part plus the cluster-only keys (image, resources,
volumes, scheduling, run policy).

Who uses it and why it exists: ``controller/crd.py`` generates the CRD's structural schema from
:class:`FineTuneJobSpec` (``make crd``), and ``controller/reconcile.py`` validates every job it
sees with :func:`parse_job_spec`. Embedded Kubernetes types whose full schema we do not re-declare
(a Volume's source, an Affinity, a valueFrom) are typed as objects that keep unknown fields; the
API server still validates them when the pod is created.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator
from pydantic.config import JsonDict

from .base import ConfigError, Strict, format_validation_error
from .trainer_spec import CLUSTER_KEYS, TrainerSpec

#: Marks a field whose value is an embedded Kubernetes object kept as-is (see crd.py).
PRESERVE: JsonDict = {"x-kubernetes-preserve-unknown-fields": True}
#: A resource quantity ("500m", "4Gi", 2): the CRD types it as int-or-string.
Quantity = int | str

_NAME_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: A DNS subdomain (schedulerName, runtimeClassName).
_SUBDOMAIN_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A label or annotation key: an optional DNS-subdomain prefix and "/", then a name of 63 at most.
_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
#: Keys the pods' labels and annotations may not carry, whatever the cluster's admission policy
#: allows: kubeclip's own (the controller finds its pods by them), Kubernetes' (``kubernetes.io``,
#: ``k8s.io``: AppArmor and seccomp annotations among them) and its SIG projects' (``x-k8s.io``:
#: Kueue's pod integration would take the pods over). ``app.kubernetes.io/*`` (the recommended
#: labels) stays allowed. Mirrored by a CEL rule (controller/crd.py).
RESERVED_KEY_RE = r"^([^/]*\.)?(kubeclip\.dev|x-k8s\.io|kubernetes\.io|k8s\.io)/"
ALLOWED_KEY_RE = r"^app\.kubernetes\.io/"
#: At most this many pod labels / annotations, and this many bytes of annotations in all.
MAX_POD_LABELS = 32
MAX_POD_ANNOTATIONS = 32
MAX_ANNOTATION_VALUE = 4096


class ResourceRequirements(Strict):
    """Per-node compute resources; ``nvidia.com/gpu`` must equal numProcPerNode when given."""

    limits: dict[str, Quantity] = Field(
        default_factory=dict,
        description="Maximum resources per node pod, e.g. {cpu: 8, memory: 32Gi, nvidia.com/gpu: 4}.",
    )
    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="Requested resources per node pod (scheduling)."
    )


class Volume(Strict):
    """A pod Volume (persistentVolumeClaim, nfs, hostPath, emptyDir, ...), Kubernetes' own shape."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True, json_schema_extra=PRESERVE)
    name: str = Field(
        min_length=1, max_length=63, pattern=_NAME_RE, description="Volume name, referenced by volumeMounts."
    )


class VolumeMount(Strict):
    name: str = Field(min_length=1, max_length=63, description="Name of a volume in spec.volumes.")
    mountPath: str = Field(
        min_length=1, max_length=4096, description="Where the volume appears in the trainer container."
    )
    subPath: str | None = Field(default=None, max_length=4096, description="Sub-path inside the volume.")
    readOnly: bool = Field(default=False, description="Mount read-only (e.g. the dataset).")


class EnvVar(Strict):
    name: str = Field(min_length=1, max_length=256, description="Environment variable name.")
    value: str | None = Field(default=None, description="Literal value.")
    valueFrom: dict[str, Any] | None = Field(
        default=None,
        description="Kubernetes EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, ...).",
        json_schema_extra=PRESERVE,
    )


class Toleration(Strict):
    key: str | None = Field(default=None, description="Taint key; empty with operator Exists matches all taints.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal (default Equal).")
    value: str | None = Field(default=None, description="Taint value for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty tolerates all."
    )
    tolerationSeconds: int | None = Field(default=None, description="For NoExecute: how long the pod stays bound.")


class LocalObjectReference(Strict):
    name: str = Field(min_length=1, max_length=253, description="Name of a Secret in the job's namespace.")


CleanPodPolicy = Literal["Running", "All", "None"]
#: runPolicy.startDeadlineSeconds's default: long enough for a cold pull of a multi-GB CUDA image
#: and for a cluster autoscaler to add a node (both typically minutes), short enough that a typo
#: in the image name or an impossible resource request ends the job within the hour, not never.
DEFAULT_START_DEADLINE_S = 600
#: spec.terminationGracePeriodSeconds by default: Kubernetes' 30 s is too short to finish a step and
#: write a ViT-L checkpoint (weights and AdamW moments, ~5 GB) to network storage.
DEFAULT_TERMINATION_GRACE_S = 300


class RunPolicy(Strict):
    """How the job runs: restarts, deadlines, cleanup and suspension (Kubeflow's RunPolicy)."""

    backoffLimit: int = Field(
        default=3,
        ge=0,
        le=1000,
        description="Restarts allowed after failed attempts (any exit but the trainer's final verdicts, "
        "OOMKilled, signals). The (backoffLimit+1)th failure fails the job with BackoffLimitExceeded. "
        "Disruptions do not count unless countDisruptions is true.",
    )
    activeDeadlineSeconds: int | None = Field(
        default=None, ge=1, description="Fail the job (DeadlineExceeded) this long after it started."
    )
    startDeadlineSeconds: int | None = Field(
        default=DEFAULT_START_DEADLINE_S,
        ge=1,
        description="Fail the job when its pods are not all running this long after the attempt's pods "
        "were created (image not pullable, no node fits, pods refused). It fails with the waiting reason "
        "(e.g. ImagePullBackOff, Unschedulable) and does not use backoffLimit. Null: wait forever.",
    )
    ttlSecondsAfterFinished: int | None = Field(
        default=None, ge=0, description="Delete the job (and its children) this long after it finished."
    )
    cleanPodPolicy: CleanPodPolicy = Field(
        default="Running",
        description="Pods deleted when the job finishes: Running (those still running), All, or None.",
    )
    suspend: bool = Field(
        default=False, description="True deletes the pods and keeps the job; false again recreates them."
    )
    countDisruptions: bool = Field(
        default=False,
        description="Count disrupted attempts (eviction, preemption, node lost, pod deleted) against "
        "backoffLimit too. False: they only count against disruptionLimit.",
    )
    disruptionLimit: int = Field(
        default=20,
        ge=0,
        le=1000,
        description="Restarts allowed after disruptions (eviction, preemption, node lost, pod deleted). "
        "One more disruption fails the job with DisruptionLimitExceeded.",
    )


class FineTuneJobSpec(TrainerSpec):
    """The whole ``spec`` of a FineTuneJob: the trainer's part plus where and how to run it."""

    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Trainer container image. Empty: the controller's default image (chart value).",
    )
    imagePullPolicy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Image pull policy of the trainer container."
    )
    imagePullSecrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=16, description="Secrets used to pull the image."
    )
    resources: ResourceRequirements | None = Field(default=None, description="Resources of each node pod.")
    volumes: list[Volume] = Field(
        default_factory=list,
        max_length=64,
        description="Pod volumes holding the dataset and the output (PVC, NFS, hostPath...).",
    )
    volumeMounts: list[VolumeMount] = Field(
        default_factory=list, max_length=64, description="Mounts of spec.volumes into the trainer container."
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=128, description="Extra environment of the trainer container."
    )
    nodeSelector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods must match.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64, description="Tolerations of the pods.")
    affinity: dict[str, Any] | None = Field(
        default=None, description="Kubernetes Affinity of the pods.", json_schema_extra=PRESERVE
    )
    priorityClassName: str | None = Field(default=None, max_length=253, description="PriorityClass of the pods.")
    serviceAccountName: str | None = Field(default=None, max_length=253, description="ServiceAccount the pods run as.")
    podLabels: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_POD_LABELS,
        description="Extra labels of the node pods (cost centre, sidecar opt-outs). Keys under kubeclip.dev, "
        "kubernetes.io, k8s.io or x-k8s.io (but app.kubernetes.io) are refused; the controller's own labels win. "
        "The chart's admission policy may restrict the keys further (admission.allowedPodLabelKeys).",
    )
    podAnnotations: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_POD_ANNOTATIONS,
        description="Extra annotations of the node pods; the same reserved keys as podLabels "
        "(admission.allowedPodAnnotationKeys).",
    )
    schedulerName: str | None = Field(
        default=None,
        max_length=253,
        pattern=_SUBDOMAIN_RE,
        description="Scheduler of the node pods (e.g. a gang scheduler); only names the chart's admission "
        "policy lists (admission.allowedSchedulerNames).",
    )
    runtimeClassName: str | None = Field(
        default=None,
        max_length=253,
        pattern=_SUBDOMAIN_RE,
        description="RuntimeClass of the node pods; only names the chart's admission policy lists "
        "(admission.allowedRuntimeClassNames).",
    )
    topologySpreadConstraints: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=8,
        description="Kubernetes TopologySpreadConstraints of the node pods (e.g. one node pod per zone).",
        json_schema_extra={"items": PRESERVE},
    )
    runPolicy: RunPolicy = Field(default_factory=RunPolicy, description="Restarts, deadlines, cleanup, suspension.")
    terminationGracePeriodSeconds: int = Field(
        default=DEFAULT_TERMINATION_GRACE_S,
        ge=1,
        le=86400,
        description="Seconds between SIGTERM and SIGKILL when a pod is evicted, preempted or deleted: the "
        "ranks finish their step and node 0 writes a checkpoint there, so the next attempt resumes at that "
        "step. Allow one step plus one checkpoint write (model and AdamW state: ~3x the weights).",
    )

    @model_validator(mode="after")
    def _cross_field(self) -> FineTuneJobSpec:
        # The same rules as the CRD's CEL validations (crd.py), for objects that reach the
        # controller without the API server's checks (older CRD, kubectl --validate=false).
        for message in cross_field_errors(self):
            raise ValueError(message)
        return self


#: Environment the controller sets on every trainer pod; spec.env may not override it.
#: (torchrun reads every ``PET_*`` variable as a flag, e.g. ``PET_RDZV_ENDPOINT``; the trainer
#: reads ``KUBECLIP_*``: both prefixes are reserved whole, see :data:`RESERVED_ENV_PREFIXES`.)
RESERVED_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "NODE_RANK",
    "NPROC_PER_NODE",
    "PET_NNODES",
    "PET_NPROC_PER_NODE",
    "PET_NODE_RANK",
    "PET_MASTER_ADDR",
    "PET_MASTER_PORT",
    "PET_SHUTDOWN_TIMEOUT",
    "KUBECLIP_JOB_NAME",
    "KUBECLIP_NAMESPACE",
)
#: Prefixes of environment names spec.env may not use: torchrun's flags and the trainer's own
#: switches, so the topology and the trainer's behaviour stay the controller's.
RESERVED_ENV_PREFIXES = ("PET_", "KUBECLIP_")


def is_reserved_env(name: str) -> bool:
    """Whether spec.env may not set ``name`` (:data:`RESERVED_ENV` or a reserved prefix)."""
    return name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES)


#: Where the job's ConfigMap is mounted, and the volume name it uses.
CONFIG_DIR = "/etc/kubeclip"
CONFIG_VOLUME = "kubeclip-config"
#: A memory-backed /dev/shm for the data loader workers (the container default is 64 MiB).
SHM_VOLUME = "kubeclip-shm"
SHM_PATH = "/dev/shm"  # noqa: S108 - the pod's shared-memory mount, not a temporary file
RESERVED_VOLUMES = (CONFIG_VOLUME, SHM_VOLUME)
GPU_RESOURCE = "nvidia.com/gpu"


def cross_field_errors(spec: FineTuneJobSpec) -> list[str]:
    """Rules that span several fields (mirrored by CEL rules in the CRD)."""
    errors = []
    names = [v.name for v in spec.volumes]
    if len(set(names)) != len(names):
        errors.append("spec.volumes: names must be unique")
    for reserved in RESERVED_VOLUMES:
        if reserved in names:
            errors.append(f"spec.volumes: the name {reserved} is reserved by the controller")
    for m in spec.volumeMounts:
        if m.name not in names:
            errors.append(f"spec.volumeMounts: {m.name} is not a volume in spec.volumes")
        if m.mountPath.rstrip("/") == CONFIG_DIR or m.mountPath.startswith(CONFIG_DIR + "/"):
            errors.append(f"spec.volumeMounts: {CONFIG_DIR} is reserved for the job config")
        if m.mountPath.rstrip("/") == SHM_PATH:
            errors.append(f"spec.volumeMounts: {SHM_PATH} is mounted by the controller")
    for field, values in (("podLabels", spec.podLabels), ("podAnnotations", spec.podAnnotations)):
        for key, value in values.items():
            if not _KEY_RE.match(key) or len(key) > 317:
                errors.append(f"spec.{field}: {key[:80]!r} is not a valid key")
            elif re.match(RESERVED_KEY_RE, key) and not re.match(ALLOWED_KEY_RE, key):
                errors.append(f"spec.{field}: {key} is reserved (kubeclip.dev, kubernetes.io, k8s.io, x-k8s.io)")
            if field == "podLabels" and not _LABEL_VALUE_RE.match(value):
                errors.append(f"spec.podLabels[{key[:80]}]: {value[:80]!r} is not a valid label value")
            if field == "podAnnotations" and len(value) > MAX_ANNOTATION_VALUE:
                errors.append(f"spec.podAnnotations[{key[:80]}]: longer than {MAX_ANNOTATION_VALUE} characters")
    for e in spec.env:
        if is_reserved_env(e.name):
            errors.append(
                f"spec.env: {e.name} is set by the controller or reserved for it (the topology, PET_*, KUBECLIP_*)"
            )
    if spec.resources is not None:
        for kind in ("limits", "requests"):
            gpus = getattr(spec.resources, kind).get(GPU_RESOURCE)
            if gpus is not None and str(gpus) != str(spec.numProcPerNode):
                errors.append(f"spec.resources.{kind}[{GPU_RESOURCE}] must equal spec.numProcPerNode")
    return errors


if set(FineTuneJobSpec.model_fields) - set(TrainerSpec.model_fields) != CLUSTER_KEYS:  # checked at import
    raise RuntimeError("kubeclip.api: CLUSTER_KEYS must list exactly the fields FineTuneJobSpec adds to TrainerSpec")


def parse_job_spec(spec: Any) -> FineTuneJobSpec:
    """Validate a whole FineTuneJob spec; raises :class:`ConfigError` with one line naming the keys."""
    if not isinstance(spec, dict):
        raise ConfigError(f"spec: expected a mapping, got {type(spec).__name__}")
    try:
        return FineTuneJobSpec.model_validate(spec)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "spec")) from None
