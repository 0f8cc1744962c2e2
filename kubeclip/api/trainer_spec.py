"""The trainer's part of a FineTuneJob ``spec``: model, dataset, training, evaluation, export, output.

Who uses it and why it exists:

* the trainer (``python -m trainer JOB.yaml``, ``kubeclip run JOB.yaml``) validates a manifest
  with it before anything heavy is imported;
* :mod:`kubeclip.api.job` extends :class:`TrainerSpec` with the cluster-only fields (image,
  resources, volumes, ...), and ``controller/crd.py`` generates the CRD's structural schema from
  the result, so the API server, the controller and the trainer validate the *same* thing.

Keys are camelCase (Kubernetes convention) and unknown keys are rejected with their full path
(``spec.training.batchSzie: extra inputs are not permitted``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from .base import API_GROUP, API_VERSION, KIND, ConfigError, Strict, format_validation_error

#: Top-level spec keys that only the cluster uses (pod image, volumes, scheduling, run policy).
#: The controller types them in :mod:`kubeclip.api.job`; the trainer ignores them when it reads a
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
        "podLabels",
        "podAnnotations",
        "schedulerName",
        "runtimeClassName",
        "topologySpreadConstraints",
        "runPolicy",
        "terminationGracePeriodSeconds",
    }
)

Precision = Literal["fp32", "bf16", "fp16", "amp", "amp_bf16", "amp_fp16"]


class ModelSpec(Strict):
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


class DatasetSpec(Strict):
    trainCsv: str = Field(min_length=1, description="Path to the training CSV (one row per image-caption pair).")
    valCsv: str | None = Field(
        default=None, description="Path to a validation CSV; enables retrieval eval (R@1/5/10) at epoch ends."
    )
    separator: str | None = Field(
        default=None,
        min_length=1,
        max_length=1,
        description="CSV field separator. Empty: detected from the header line (',', tab, ';' or '|').",
    )
    imageColumn: str = Field(default="filepath", min_length=1, description="Column holding image paths.")
    captionColumn: str = Field(default="caption", min_length=1, description="Column holding captions.")
    root: str | None = Field(
        default=None,
        description="Base directory for relative image paths. Default: the directory of the CSV file.",
    )


class TrainingSpec(Strict):
    epochs: int = Field(default=1, ge=1, le=100000, description="Number of passes over the training set.")
    batchSize: int = Field(default=32, ge=1, le=1 << 20, description="Batch size per process (per GPU).")
    learningRate: float = Field(default=5e-5, gt=0, le=1.0, description="Peak learning rate of AdamW.")
    weightDecay: float = Field(
        default=0.1, ge=0, le=10.0, description="AdamW weight decay (not applied to norms, biases, logit scale)."
    )
    warmupSteps: int | None = Field(
        default=None,
        ge=0,
        description="Linear warmup steps before the cosine decay. Empty: 5% of all optimizer steps "
        "(open_clip_train's default of 10000 would keep a small fine-tune at ~0 learning rate).",
    )
    precision: Precision = Field(
        default="amp_bf16",
        description="Numeric precision: fp32; amp_bf16 / amp (= amp_fp16) autocast in bf16 / fp16 over fp32 "
        "weights; bf16 / fp16 weights and compute in that dtype. fp16, amp and amp_fp16 need a GPU (refused "
        "on CPU); bf16 and amp_bf16 need bf16 support (any CPU, GPUs from Ampere on).",
    )
    gradAccumSteps: int = Field(default=1, ge=1, le=4096, description="Micro-batches accumulated per optimizer step.")
    gradClipNorm: float | None = Field(default=None, gt=0, description="Clip gradients to this global L2 norm.")
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
    compile: bool = Field(
        default=False,
        description="torch.compile the training step's model (after the DDP wrap); the compile time (tens of "
        "seconds per text length) is logged and reported apart from throughput. Off by default until measured "
        "on a GPU (BENCHMARKS.md).",
    )
    truncateText: bool = Field(
        default=True,
        description="Run the text tower on each batch's longest caption (rounded up to 16/32/48/64/77 tokens) "
        "instead of the full context. Exact (same features) and applied only for causal text towers with "
        "end-of-text pooling (open_clip's CLIP text transformer); other towers always get the full length.",
    )
    checkpointEverySteps: int = Field(
        default=500, ge=0, description="Write a resumable checkpoint every N optimizer steps (0: only at epoch ends)."
    )
    keepCheckpoints: int = Field(default=2, ge=1, le=1000, description="How many recent checkpoints to keep.")
    logEverySteps: int = Field(default=10, ge=1, description="Log a progress line every N optimizer steps.")

    @model_validator(mode="after")
    def _towers(self) -> TrainingSpec:
        if self.lockImageUnlockedGroups and not self.lockImage:
            raise ValueError("lockImageUnlockedGroups is set but lockImage is false: set lockImage: true")
        if self.lockTextUnlockedLayers and not self.lockText:
            raise ValueError("lockTextUnlockedLayers is set but lockText is false: set lockText: true")
        if self.lockImage and self.lockText and not (self.lockImageUnlockedGroups or self.lockTextUnlockedLayers):
            raise ValueError("lockImage and lockText are both true: nothing would be trained")
        return self


class OutputSpec(Strict):
    path: str = Field(
        min_length=1,
        description="Directory for checkpoints, progress.json, metrics.json and the final model (final/).",
    )
    tensorboard: bool = Field(
        default=False,
        description="Also write TensorBoard event files under <path>/tensorboard (rank 0): training loss, "
        "learning rate, samples/s, eval recalls and loss, retention and zero-shot accuracy. View them with "
        "tensorboard --logdir <path>/tensorboard.",
    )
    takeOver: bool = Field(
        default=False,
        description="The first run of a job writes an owner marker (.kubeclip-owner.json: the job's uid and name) "
        "into path; a job whose marker is not there refuses the directory (exit 7, OutputInUse) so two jobs never "
        "prune each other's checkpoints. true: take the directory over on purpose (a re-applied job continuing "
        "another's checkpoints, which it resumes only when the config and dataset fingerprint match).",
    )


class MetricsSpec(Strict):
    port: int = Field(
        default=9090,
        ge=0,
        le=65535,
        description="Port of rank 0's /metrics (Prometheus) and /progress (JSON). 0: a free port, "
        "reported as metricsPort in progress.json.",
    )
    finalScrapeWaitSeconds: int = Field(
        default=60,
        ge=0,
        le=3600,
        description="When the run has ended, rank 0 keeps serving /metrics until one more scrape has read the "
        "final step and evaluation, at most this many seconds (set it above your Prometheus scrape interval). "
        "A run whose /metrics was never scraped ends at once. 0: never wait.",
    )


#: Validation-set keys ``spec.evaluation.metric`` may name; for the last two, lower is better.
EVAL_METRICS = (
    "image_to_text_R@1",
    "image_to_text_R@5",
    "image_to_text_R@10",
    "text_to_image_R@1",
    "text_to_image_R@5",
    "text_to_image_R@10",
    "val_loss",
    "image_to_text_mean_rank",
    "text_to_image_mean_rank",
)
LOWER_IS_BETTER = frozenset({"val_loss", "image_to_text_mean_rank", "text_to_image_mean_rank"})

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class ZeroShotSpec(Strict):
    csv: str = Field(
        min_length=1,
        description="CSV of images and their class names (columns spec.dataset.imageColumn and labelColumn; "
        "same separator and path rules as the training CSV). Top-1/top-5 zero-shot accuracy over its classes "
        "is measured before training, at each eval and for each WiSE-FT alpha.",
    )
    labelColumn: str = Field(default="label", min_length=1, description="Column holding the class name of each image.")
    templates: list[str] = Field(
        default_factory=lambda: ["a photo of a {}."],
        min_length=1,
        max_length=128,
        description="Caption templates; '{}' is replaced by the class name and each class's text embedding is "
        "the mean over templates (open_clip's zero-shot classifier).",
    )

    @model_validator(mode="after")
    def _placeholders(self) -> ZeroShotSpec:
        bad = [t for t in self.templates if "{}" not in t]
        if bad:
            raise ValueError(f"templates must contain '{{}}' (the class name): {bad[0]!r}")
        return self


class EvaluationSpec(Strict):
    retentionCsv: str | None = Field(
        default=None,
        description="A general-domain image-caption CSV (same columns and rules as valCsv) evaluated before "
        "training and at each eval: how much of what the model knew is kept.",
    )
    zeroShot: ZeroShotSpec | None = Field(default=None, description="Zero-shot classification on your classes.")
    metric: Literal[EVAL_METRICS] = Field(  # type: ignore[valid-type]
        default="image_to_text_R@1",
        description="Validation metric that picks the best checkpoint (spec.export.weights: best) and drives "
        "early stopping (loss and mean ranks: lower is better; recalls: higher).",
    )
    patience: int | None = Field(
        default=None,
        ge=1,
        le=100000,
        description="Early stopping: end training after this many evals (epoch ends) without the metric "
        "improving by more than minDelta. Empty: never stop early.",
    )
    minDelta: float = Field(
        default=0.0, ge=0.0, description="Smallest change of the metric that counts as improvement."
    )


class ExportSpec(Strict):
    weights: Literal["last", "best"] = Field(
        default="last",
        description="Fine-tuned weights to export: the last step's, or the best by spec.evaluation.metric "
        "(kept as <output>/checkpoints/best.safetensors).",
    )
    wiseFtAlphas: list[Fraction] = Field(
        default_factory=list,
        max_length=64,
        description="WiSE-FT: for each alpha the weights (1-alpha)*start + alpha*finetuned are evaluated on val, "
        "retention and zero-shot at the end (0 and 1 are always in the table).",
    )
    select: Literal["finetuned", "alpha", "bestWithinRetentionDrop"] = Field(
        default="finetuned",
        description="What goes to final/: the fine-tuned weights; the fixed alpha; or the alpha with the best val "
        "image_to_text_R@1 whose retention image_to_text_R@1 is at most maxRetentionDrop below the start model's.",
    )
    alpha: Fraction | None = Field(default=None, description="The alpha exported when select is alpha.")
    maxRetentionDrop: Fraction | None = Field(
        default=None,
        description="Largest allowed retention R@1 drop (absolute) when select is bestWithinRetentionDrop.",
    )
    allAlphas: bool = Field(
        default=False,
        description="Also export every evaluated alpha as its own local-dir: model under <output>/wiseft/alpha-<a>/.",
    )

    @model_validator(mode="after")
    def _policy(self) -> ExportSpec:
        if self.select == "alpha" and self.alpha is None:
            raise ValueError("select: alpha needs spec.export.alpha")
        if self.select == "bestWithinRetentionDrop" and self.maxRetentionDrop is None:
            raise ValueError("select: bestWithinRetentionDrop needs spec.export.maxRetentionDrop")
        return self

    def alphas(self) -> list[float]:
        """Every alpha the end-of-run sweep evaluates, ascending: 0, 1, the listed ones, the fixed one."""
        extra = [self.alpha] if self.alpha is not None else []
        return sorted({0.0, 1.0, *self.wiseFtAlphas, *extra})

    def sweeps(self) -> bool:
        return bool(self.wiseFtAlphas) or self.select != "finetuned" or self.allAlphas


class TrainerSpec(Strict):
    """Everything the trainer needs; the controller's CRD spec extends this class."""

    model: ModelSpec
    dataset: DatasetSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    output: OutputSpec
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    numNodes: int = Field(default=1, ge=1, le=1024, description="Number of nodes (pods), one torchrun each.")
    numProcPerNode: int = Field(default=1, ge=1, le=64, description="Training processes per node (GPUs per node).")
    rendezvousTimeoutSeconds: int = Field(
        default=1800,
        ge=10,
        le=86400,
        description="How long the nodes wait for each other at start (node 0's address, then torchrun's "
        "rendezvous): long enough for a node scale-up or a slow image pull. Then exit 6, a retryable failure.",
    )
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="Forgetting checks: retention set, zero-shot, early stopping."
    )
    export: ExportSpec = Field(default_factory=ExportSpec, description="What is exported: best/last, WiSE-FT mixes.")

    @model_validator(mode="after")
    def _needs_val(self) -> TrainerSpec:
        ev, ex = self.evaluation, self.export
        if self.dataset.valCsv is None:
            used = [
                k
                for k, on in (
                    ("spec.evaluation.retentionCsv", ev.retentionCsv),
                    ("spec.evaluation.zeroShot", ev.zeroShot),
                    ("spec.evaluation.patience", ev.patience),
                    ("spec.export.weights: best", ex.weights == "best"),
                    ("spec.export.wiseFtAlphas", ex.wiseFtAlphas),
                    ("spec.export.select", ex.select != "finetuned"),
                    ("spec.export.allAlphas", ex.allAlphas),
                )
                if on
            ]
            if used:
                raise ValueError(f"{used[0]} needs spec.dataset.valCsv (the gain is measured on it)")
        if ex.select == "bestWithinRetentionDrop" and not ev.retentionCsv:
            raise ValueError("spec.export.select: bestWithinRetentionDrop needs spec.evaluation.retentionCsv")
        return self


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
