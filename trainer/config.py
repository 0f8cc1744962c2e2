"""The one config model of a fine-tuning run: the ``spec`` of a FineTuneJob.

Who uses it and why it exists:

* the trainer (``python -m trainer JOB.yaml``, ``kubeclip run JOB.yaml``) validates a manifest
  with it before anything heavy is imported;
* the controller (``controller/api.py``) subclasses :class:`TrainerSpec` with the cluster-only
  fields (image, resources, volumes, ...) and generates the CRD's structural schema from the
  result, so the API server, the controller and the trainer validate the *same* thing.

Keys are camelCase (Kubernetes convention) and unknown keys are rejected with their full path
(``spec.training.batchSzie: extra inputs are not permitted``). This module imports pydantic and
PyYAML only: the controller image must never need torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

API_GROUP = "kubeclip.dev"
API_VERSION = "v1alpha1"
KIND = "FineTuneJob"

#: Top-level spec keys that only the cluster uses (pod image, volumes, scheduling, run policy).
#: The controller types them in ``controller/api.py``; the trainer ignores them when it reads a
#: whole manifest, so one YAML file runs both in the cluster and with ``kubeclip run``.
CLUSTER_KEYS = frozenset(
    {
        "image",
        "imagePullPolicy",
        "imagePullSecrets",
        "resources",
        "volumes",
        "volumeMounts",
        "env",
        "nodeSelector",
        "tolerations",
        "affinity",
        "priorityClassName",
        "serviceAccountName",
        "runPolicy",
    }
)

Precision = Literal["fp32", "bf16", "fp16", "amp", "amp_bf16", "amp_fp16"]


class _Strict(BaseModel):
    """Base: unknown keys are errors, field names are the camelCase API names."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ModelSpec(_Strict):
    name: str = Field(
        min_length=1,
        description="OpenCLIP model name (e.g. ViT-B-32), or 'local-dir:/path' to a directory "
        "holding open_clip_config.json (and optionally weights), OpenCLIP's own convention.",
    )
    pretrained: str = Field(
        default="",
        description="Pretrained tag (e.g. laion2b_s34b_b79k) or a path to a weights file "
        "(.safetensors/.pt/.bin). Empty means random initialisation (or the weights found in a "
        "local-dir model).",
    )


class DatasetSpec(_Strict):
    trainCsv: str = Field(min_length=1, description="Path to the training CSV (one row per image-caption pair).")
    valCsv: Optional[str] = Field(
        default=None, description="Path to a validation CSV; enables retrieval eval (R@1/5/10) at epoch ends."
    )
    separator: Optional[str] = Field(
        default=None,
        min_length=1,
        max_length=1,
        description="CSV field separator. Empty: detected from the header line (',', tab, ';' or '|').",
    )
    imageColumn: str = Field(default="filepath", min_length=1, description="Column holding image paths.")
    captionColumn: str = Field(default="caption", min_length=1, description="Column holding captions.")
    root: Optional[str] = Field(
        default=None,
        description="Base directory for relative image paths. Default: the directory of the CSV file.",
    )


class TrainingSpec(_Strict):
    epochs: int = Field(default=1, ge=1, le=100000, description="Number of passes over the training set.")
    batchSize: int = Field(default=32, ge=1, le=1 << 20, description="Batch size per process (per GPU).")
    learningRate: float = Field(default=5e-5, gt=0, le=1.0, description="Peak learning rate of AdamW.")
    weightDecay: float = Field(
        default=0.1, ge=0, le=10.0, description="AdamW weight decay (not applied to norms, biases, logit scale)."
    )
    warmupSteps: Optional[int] = Field(
        default=None,
        ge=0,
        description="Linear warmup steps before the cosine decay. Empty: 5% of all optimizer steps "
        "(open_clip_train's default of 10000 would keep a small fine-tune at ~0 learning rate).",
    )
    precision: Precision = Field(
        default="amp_bf16",
        description="Numeric precision. amp_* use autocast on GPU; on CPU every mode but bf16 runs in fp32.",
    )
    gradAccumSteps: int = Field(default=1, ge=1, le=4096, description="Micro-batches accumulated per optimizer step.")
    gradClipNorm: Optional[float] = Field(default=None, gt=0, description="Clip gradients to this global L2 norm.")
    gradCheckpointing: bool = Field(default=False, description="Trade compute for memory (activation checkpointing).")
    lockImage: bool = Field(default=False, description="Freeze the image tower (open_clip's --lock-image).")
    lockImageUnlockedGroups: int = Field(
        default=0,
        ge=0,
        le=10000,
        description="With lockImage: leave the last N layer groups of the image tower trainable "
        "(open_clip's --lock-image-unlocked-groups; a ViT has layers+2 groups: embeddings, each block, "
        "last block with the final norm, projection). Checked against the model before training.",
    )
    lockImageFreezeBnStats: bool = Field(
        default=True,
        description="With lockImage: also freeze BatchNorm running statistics of the locked groups "
        "(open_clip's --lock-image-freeze-bn-stats; ViTs have no BatchNorm).",
    )
    lockText: bool = Field(default=False, description="Freeze the text tower (open_clip's --lock-text).")
    lockTextUnlockedLayers: int = Field(
        default=0,
        ge=0,
        le=10000,
        description="With lockText: leave the last N layer groups of the text tower trainable "
        "(open_clip's --lock-text-unlocked-layers; layers+2 groups: embeddings, each block, last block "
        "with the final norm, projection). Checked against the model before training.",
    )
    lockTextFreezeLayerNorm: bool = Field(
        default=True,
        description="With lockText: keep the LayerNorms of the unlocked layers frozen too "
        "(open_clip's --lock-text-freeze-layer-norm). false works only for Hugging Face text towers; "
        "open_clip's own text transformer always freezes them.",
    )
    localLoss: bool = Field(
        default=False,
        description="Each process computes the contrastive loss of its own rows against the global "
        "batch (B x N*B logits) instead of the full N*B x N*B (open_clip's --local-loss). Use with "
        "gatherWithGrad: without it the gradient is not that of the global-batch loss.",
    )
    gatherWithGrad: bool = Field(
        default=False,
        description="Gather features across processes with their gradient (open_clip's "
        "--gather-with-grad): the gradient is exactly that of the global-batch loss.",
    )
    seed: int = Field(default=0, ge=0, description="Random seed; a run with the same seed and data is reproducible.")
    workers: int = Field(default=2, ge=0, le=64, description="Data-loader worker processes per training process.")
    gpuDecode: bool = Field(
        default=True,
        description="On GPU, decode JPEGs with nvJPEG and crop/resize/normalise on the GPU (loader workers only "
        "read files); false: PIL in the loader workers, as on CPU. Ignored on CPU.",
    )
    checkpointEverySteps: int = Field(
        default=500, ge=0, description="Write a resumable checkpoint every N optimizer steps (0: only at epoch ends)."
    )
    keepCheckpoints: int = Field(default=2, ge=1, le=1000, description="How many recent checkpoints to keep.")
    logEverySteps: int = Field(default=10, ge=1, description="Log a progress line every N optimizer steps.")

    @model_validator(mode="after")
    def _towers(self) -> "TrainingSpec":
        if self.lockImageUnlockedGroups and not self.lockImage:
            raise ValueError("lockImageUnlockedGroups is set but lockImage is false: set lockImage: true")
        if self.lockTextUnlockedLayers and not self.lockText:
            raise ValueError("lockTextUnlockedLayers is set but lockText is false: set lockText: true")
        if self.lockImage and self.lockText and not (self.lockImageUnlockedGroups or self.lockTextUnlockedLayers):
            raise ValueError("lockImage and lockText are both true: nothing would be trained")
        return self


class OutputSpec(_Strict):
    path: str = Field(
        min_length=1,
        description="Directory for checkpoints, progress.json, metrics.json and the final model (final/).",
    )


class MetricsSpec(_Strict):
    port: int = Field(
        default=9090,
        ge=0,
        le=65535,
        description="Port of rank 0's /metrics (Prometheus) and /progress (JSON). 0: a free port, "
        "reported as metricsPort in progress.json.",
    )


class TrainerSpec(_Strict):
    """Everything the trainer needs; the controller's CRD spec extends this class."""

    model: ModelSpec
    dataset: DatasetSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    output: OutputSpec
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    numNodes: int = Field(default=1, ge=1, le=1024, description="Number of nodes (pods), one torchrun each.")
    numProcPerNode: int = Field(default=1, ge=1, le=64, description="Training processes per node (GPUs per node).")


class ConfigError(ValueError):
    """A config the user must fix; ``str()`` is one line naming each bad key by its path."""


def format_validation_error(err: ValidationError, prefix: str = "spec") -> str:
    """One line: ``spec.training.batchSize: Input should be greater than or equal to 1; ...``."""
    parts = []
    for e in err.errors():
        loc = ".".join([prefix, *(str(p) for p in e["loc"])]) if e["loc"] else prefix
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def trainer_part(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec keys the trainer reads: everything but :data:`CLUSTER_KEYS`."""
    return {k: v for k, v in spec.items() if k not in CLUSTER_KEYS}


def parse_spec(spec: Any, *, prefix: str = "spec") -> TrainerSpec:
    """Validate a spec mapping; cluster-only keys are dropped, everything else must be known."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{prefix}: expected a mapping, got {type(spec).__name__}")
    try:
        return TrainerSpec.model_validate(trainer_part(spec))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix)) from None


def parse_manifest(doc: Any) -> tuple[str, TrainerSpec]:
    """Accept a FineTuneJob manifest (or a bare spec) and return ``(job name, spec)``."""
    if isinstance(doc, dict) and "spec" in doc:
        api = doc.get("apiVersion", f"{API_GROUP}/{API_VERSION}")
        kind = doc.get("kind", KIND)
        if kind != KIND or api.split("/")[0] != API_GROUP:
            raise ConfigError(f"expected apiVersion {API_GROUP}/{API_VERSION} kind {KIND}, got {api} {kind}")
        name = str((doc.get("metadata") or {}).get("name") or "finetunejob")
        return name, parse_spec(doc["spec"])
    return "finetunejob", parse_spec(doc)


def load_manifest(path: str | Path) -> tuple[str, TrainerSpec]:
    """Read a YAML/JSON file holding one FineTuneJob (the first one if there are several documents)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {p}: {err.strerror}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {str(err).splitlines()[0]}") from None
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind", KIND) == KIND]
    if not jobs:
        raise ConfigError(f"{p}: no {KIND} document found")
    return parse_manifest(jobs[0])


# --------------------------------------------------------------------------------------------
# What the trainer reports back. The controller reads these (exit codes from pod status, the
# progress JSON from node 0), so they are part of the same contract as the spec.
# --------------------------------------------------------------------------------------------

#: Exit code of a bad config (unknown key, wrong type): retrying cannot help.
EXIT_CONFIG = 2
#: Exit code of a failed dataset preflight (wrong separator, missing images, ...): not retryable.
EXIT_PREFLIGHT = 3

#: Where Kubernetes reads a container's termination message from.
TERMINATION_LOG = "/dev/termination-log"
#: The port torch.distributed's rendezvous uses between nodes (Kubeflow's default too).
DEFAULT_MASTER_PORT = 23456


class LastCheckpoint(BaseModel):
    path: str
    step: int
    time: float = Field(description="Unix time the checkpoint was committed.")


class Progress(BaseModel):
    """Served by rank 0 at ``GET /progress`` (metrics port) and written to ``<output>/progress.json``."""

    model_config = ConfigDict(extra="ignore")

    phase: Literal["starting", "preflight", "training", "evaluating", "exporting", "done", "failed"] = "starting"
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    totalSteps: int = 0
    loss: Optional[float] = None
    learningRate: Optional[float] = None
    samplesPerSecond: Optional[float] = None
    etaSeconds: Optional[float] = None
    eval: dict[str, float] = Field(default_factory=dict, description="Latest retrieval eval, e.g. image_to_text_R@1.")
    lastCheckpoint: Optional[LastCheckpoint] = None
    metricsPort: Optional[int] = Field(default=None, description="Port rank 0 serves /metrics and /progress on.")
    modelPath: Optional[str] = Field(default=None, description="Where the exported model went (phase done).")
    updatedAt: float = 0.0
    message: str = ""
