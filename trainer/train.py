"""The training loop: fine-tune an OpenCLIP model contrastively on a CSV of image-caption pairs.

Launch it any of these ways (each rank runs :func:`train`):

    python -m trainer job.yaml                                   # one process (CPU or one GPU)
    torchrun --standalone --nproc_per_node 2 -m trainer job.yaml # N processes on this machine
    kubeclip run job.yaml                                        # same, numProcPerNode processes,
                                                                 #   with a progress bar
    python -m trainer.node /etc/kubeclip/job.yaml                # in a pod: preflight, then torchrun
                                                                 #   with the PET_* env the controller sets

The loop is a :class:`Recipe` in named pieces, read in this order: :meth:`Recipe.setup`
(topology → seed → model → DDP → data → resume → AdamW → metrics), :meth:`Recipe.evaluate_baseline`,
then per epoch :meth:`Recipe.train_epoch`, which runs :meth:`Recipe.train_step` (set lr →
:func:`forward_backward` over the micro-batches → clip → AdamW step) and, at its end,
:meth:`Recipe.evaluate` and :meth:`Recipe.save_checkpoint`; finally :meth:`Recipe.export_final`.
Everything the loop changes lives in one :class:`LoopState`. A step reads nothing back from the
GPU: the loss stays on the device until a log step, checkpoint or epoch end (``trainer.fastpath``).
A run restarted with the same command continues from the newest checkpoint in
``<output>/checkpoints`` at the exact step (see ``trainer.checkpoint`` and ``trainer.data``).
On SIGTERM/SIGINT the ranks stop together at a step boundary after a checkpoint there
(``trainer.preemption``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kubeclip.api import TrainerSpec, TrainerVerdict, termination_log_path, termination_message
from trainer import checkpoint, distributed, precision, truncate
from trainer.data import CaptionDataset, ShardedBatchSampler, eval_loader, train_loader
from trainer.evaluate import evaluate
from trainer.exits import write_termination_log
from trainer.export import export
from trainer.fastpath import CompileClock, LossWatch, compile_step
from trainer.forgetting import Forgetting
from trainer.loss import make_loss
from trainer.model import build, is_siglip, param_groups
from trainer.optim import adamw, default_warmup, lr_at, set_lr
from trainer.preemption import Preempted, StopRequest, shield_workers
from trainer.preflight import DatasetReport

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from trainer.gpu_data import DeviceLoader
    from trainer.metrics import TrainerMetrics

log = logging.getLogger("trainer")

#: CLIP clamps its learned temperature to at most 100 (logit_scale = ln 100) for stability.
MAX_LOGIT_SCALE = math.log(100)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer: ranks compare theirs to prove they hold the same model."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _outputs(out: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(image features, text features, logit_scale.exp(), logit_bias or None)`` of an open_clip forward."""
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"], out.get("logit_bias")
    return out[0], out[1], out[2], (out[3] if len(out) > 3 else None)


def forward_backward(
    ddp: torch.nn.Module,
    loss_fn: Callable,
    micro_batches: list,
    autocast=contextlib.nullcontext,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """Accumulate into ``.grad`` the gradient of the loss of all ``micro_batches`` together; return that
    loss, detached, on the device (reading it is a host sync: the loop does so only at log steps).

    One micro-batch: one forward and backward. Several (``gradAccumSteps``): open_clip's feature
    cache — a no-grad forward of every micro-batch first, then per micro-batch a forward with grad
    whose loss takes the other micro-batches' cached features as negatives. The encoders' gradient
    summed over the micro-steps is that of the loss of the whole accumulated batch; the logit
    scale/bias enter the loss with grad in the last micro-step only, so theirs is counted once
    (open_clip_train counts it once per micro-step). DDP syncs only in the last micro-step.
    ``ddp`` may be ``torch.compile``'d; the no-grad cache forward runs the plain model.
    """
    model = getattr(ddp, "_orig_mod", ddp)
    model = getattr(model, "module", model)
    k = len(micro_batches)
    cached = []
    if k > 1:
        with torch.no_grad(), autocast():
            cached = [_outputs(model(images, tokens))[:2] for images, tokens in micro_batches]
    loss: torch.Tensor | None = None
    no_sync = getattr(ddp, "no_sync", None)  # DDP's (also through a compiled module); absent on one process
    for j, (images, tokens) in enumerate(micro_batches):
        last = j == k - 1
        sync = no_sync() if not last and no_sync is not None else contextlib.nullcontext()
        with sync:
            with autocast():
                img, txt, scale, bias = _outputs(ddp(images, tokens))
                if k > 1:
                    img = torch.cat([c[0] for c in cached[:j]] + [img] + [c[0] for c in cached[j + 1 :]])
                    txt = torch.cat([c[1] for c in cached[:j]] + [txt] + [c[1] for c in cached[j + 1 :]])
                if not last:
                    scale = scale.detach()
                    bias = bias.detach() if bias is not None else None
                loss = loss_fn(img, txt, scale, bias)
            (scaler.scale(loss) if scaler is not None else loss).backward()
    if loss is None:
        raise ValueError("forward_backward needs at least one micro-batch")
    return loss.detach()


@dataclass
class LoopState:
    """What the loop changes as it runs; everything else on the :class:`Recipe` is fixed after setup."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch the run (re)started in, then the current one
    step_in_epoch: int = 0  # where in ``epoch`` the run (re)started
    loss: float = float("nan")  # loss of the last logged optimizer step (read from the device at log steps)
    lr: float = 0.0
    epoch_losses: list[float] = field(default_factory=list)  # mean training loss of each epoch run here
    last_eval: dict = field(default_factory=dict)
    evaluated_last: bool = False  # the last epoch's eval ran in this process
    steady_time: float = 0.0  # seconds and samples of steps that did not wait for loader start-up
    steady_samples: int = 0
    steady_wait: float = 0.0  # of which waiting for the next batch
    first_step_at: float | None = None
    wait_since_log: float = 0.0  # data wait and steps since the last log line (its data_wait is their mean)
    steps_since_log: int = 0


class Recipe:
    """One rank of a fine-tuning run, in named pieces (torchtune's recipe shape)."""

    def __init__(self, job: str, spec: TrainerSpec, report: DatasetReport, started_at: float | None = None):
        self.job, self.spec, self.t, self.report = job, spec, spec.training, report
        self.out = spec.output.path
        self.t_start = started_at or time.time()
        self.state = LoopState()
        self.metrics: TrainerMetrics | None = None  # rank 0's, from _setup_metrics

    # ---- setup ------------------------------------------------------------------------------
    def setup(self) -> None:
        t = self.t
        self.t_train = time.time()
        self.topo = topo = distributed.setup()
        # SIGTERM/SIGINT: finish the step, checkpoint, stop (trainer.preemption); before loader workers fork
        self.stop = StopRequest(topo.world)
        level, fmt = (
            (logging.INFO, "%(asctime)s %(message)s")
            if topo.is_main
            else (logging.WARNING, f"%(asctime)s rank{topo.rank} %(message)s")
        )
        logging.basicConfig(level=level, format=fmt, force=True)
        # Same seed on every rank: identical initial weights (DDP broadcasts rank 0's anyway).
        random.seed(t.seed)
        np.random.seed(t.seed)
        torch.manual_seed(t.seed)
        self._setup_model()
        self._setup_data()
        # Baseline, retention/zero-shot evals, best weights, WiSE-FT; keeps θ_start, so it is made
        # from the built model before a checkpoint's weights are loaded into it.
        self.watch = Forgetting(
            self.spec,
            topo,
            self.model,
            self.val_table,
            self.report.eval_sets,
            self.tf_val,
            self.tokenizer,
            self.autocast,
        )
        ck = self._resume_position()
        self._setup_optimizer(ck)
        self._setup_metrics()

    def _setup_model(self) -> None:
        t, topo = self.t, self.topo
        self.model, tf_train, self.tf_val, self.tokenizer, self.oc_config = build(self.spec, topo.device)
        self.dtype, self.autocast, use_scaler = precision.setup(t.precision, topo.device)
        if self.dtype != torch.float32:
            self.model.to(self.dtype)
        # Exact text truncation (trainer.truncate): the collate cuts each batch to its longest caption.
        self.cut, why = truncate.enable(self.model) if t.truncateText else (None, "spec.training.truncateText false")
        log.info("text truncation %s: %s", "on" if self.cut else "off", why)
        self.ddp = distributed.wrap(self.model, topo)
        self.step_module = compile_step(self.ddp, t.compile)  # what train_step runs (eval runs self.model)
        self.compile_clock = CompileClock(t.compile)
        self.losses = LossWatch(topo.device)
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.loss_fn = make_loss(
            is_siglip(self.model), topo.rank, topo.world, local_loss=t.localLoss, gather_with_grad=t.gatherWithGrad
        )
        self.tf_train = tf_train

    def _setup_data(self) -> None:
        t, topo = self.t, self.topo
        # The preflight's tables (trainer.preflight): the rows it checked, mapped from the node's copy.
        self.train_table, self.val_table = self.report.train, self.report.val
        # The dataset's identity goes into every checkpoint's fingerprint (trainer.checkpoint).
        self.dataset_identity = checkpoint.dataset_identity(self.train_table, self.val_table)
        self.sampler = ShardedBatchSampler(len(self.train_table), t.batchSize, topo.world, topo.rank, t.seed)
        loader: DataLoader | DeviceLoader | None = None
        if topo.device.type == "cuda" and t.gpuDecode:  # JPEG decode, crop and resize on the GPU (trainer.gpu_data)
            from trainer.gpu_data import gpu_train_loader

            loader = gpu_train_loader(
                self.train_table, self.tf_train, self.tokenizer, t.seed, self.sampler, t.workers, topo.device, self.cut
            )
        if loader is None:
            dataset = CaptionDataset(self.train_table, self.tf_train, self.tokenizer, t.seed, augment=True)
            loader = train_loader(dataset, self.sampler, t.workers, topo.device.type == "cuda", self.cut)
        self.loader: DataLoader | DeviceLoader = loader
        shield_workers(self.loader)  # SIGTERM reaches the loader workers too: the rank decides (trainer.preemption)
        self.steps_per_epoch = self.sampler.batches_per_epoch // t.gradAccumSteps
        self.total_steps = self.steps_per_epoch * t.epochs
        self.warmup = t.warmupSteps if t.warmupSteps is not None else default_warmup(self.total_steps)
        self.global_batch = t.batchSize * topo.world * t.gradAccumSteps

    def _resume_position(self) -> dict | None:
        """Read the newest checkpoint (if any), set the data position and start the loader early:
        its workers decode the first batches while the optimizer and metrics are set up."""
        t, s = self.t, self.state
        # Every rank reads the newest readable checkpoint (falling back past unreadable ones, refusing
        # one written under a config it cannot resume: exit 5); rank 0's choice wins if a rank differs.
        self.skipped_checkpoints: list[str] = []
        found, ck = checkpoint.load_latest(self.out, self.spec, self.skipped_checkpoints, self.dataset_identity)
        self.latest = distributed.broadcast_object(str(found or ""), self.topo)
        if self.latest != str(found or ""):
            ck = checkpoint.load(Path(self.latest)) if self.latest else None
        if ck is not None:
            s.step, s.epoch, s.step_in_epoch = ck["step"], ck["epoch"], ck["step_in_epoch"]
        self.first_batches = None
        if s.epoch < t.epochs:
            self.sampler.set_position(s.epoch, s.step_in_epoch * t.gradAccumSteps)
            self.first_batches = iter(self.loader)
        return ck

    def _setup_optimizer(self, ck: dict | None) -> None:
        topo, s = self.topo, self.state
        self.opt = adamw(param_groups(self.model, self.t.weightDecay), topo.device)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if ck is None:
            return
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        if ck.get("world") != topo.world:
            log.warning(
                "checkpoint was written by %s processes, this run has %d: the data order after resume "
                "differs from an uninterrupted run (weights, optimizer and step are restored)",
                ck.get("world"),
                topo.world,
            )
        rngs = ck["rng"]
        checkpoint.set_rng_state(rngs[topo.rank] if topo.rank < len(rngs) else rngs[0])
        log.info("resumed from %s: step %d (epoch %d, step %d of it)", self.latest, s.step, s.epoch, s.step_in_epoch)

    def _setup_metrics(self) -> None:
        if not self.topo.is_main:
            return
        from trainer.metrics import TrainerMetrics

        t, s = self.t, self.state
        self.metrics = metrics = TrainerMetrics(
            self.job, self.out, t.epochs, self.total_steps, tensorboard=self.spec.output.tensorboard
        )
        metrics.serve(self.spec.metrics.port)
        metrics.step.set(s.step)
        metrics.update(phase="training", step=s.step, epoch=s.epoch, skippedCheckpoints=self.skipped_checkpoints)
        log.info(
            "training %s: %d processes on %s, %d steps (%d/epoch x %d epochs), global batch %d, warmup %d, precision %s",
            self.job,
            self.topo.world,
            self.topo.device.type,
            self.total_steps,
            self.steps_per_epoch,
            t.epochs,
            self.global_batch,
            self.warmup,
            precision.describe(t.precision, self.topo.device),
        )

    # ---- one optimizer step, one epoch ------------------------------------------------------
    def train_step(self, batches) -> float:
        """Set lr, forward/backward every micro-batch, clip, AdamW step; return the data wait (s).

        No host sync: the loss stays on the device (:class:`trainer.fastpath.LossWatch`); the loop
        checks it at log steps, before checkpoints and at epoch ends.
        """
        t, s = self.t, self.state
        s.lr = lr_at(s.step, t.learningRate, self.warmup, self.total_steps)
        set_lr(self.opt, s.lr)
        micro, wait = [], 0.0
        for _ in range(t.gradAccumSteps):
            t0 = time.perf_counter()
            images, tokens = next(batches)
            wait += time.perf_counter() - t0
            micro.append(
                (
                    images.to(self.topo.device, self.dtype, non_blocking=True),
                    tokens.to(self.topo.device, non_blocking=True),
                )
            )
        self.compile_clock.start([(tuple(im.shape), tuple(tok.shape)) for im, tok in micro])
        loss = forward_backward(self.step_module, self.loss_fn, micro, self.autocast, self.scaler)
        # the same on every rank (a global-batch loss), so every rank stops at the same check
        self.losses.observe(loss, s.step + 1)
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        if t.gradClipNorm:
            torch.nn.utils.clip_grad_norm_(self.trainable, t.gradClipNorm)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        s.step += 1
        return wait

    def train_epoch(self, epoch: int) -> None:
        """Steps of one epoch (from where a resumed run stopped), then eval and an epoch-end checkpoint."""
        t, s = self.t, self.state
        first_s = s.step_in_epoch if epoch == s.epoch else 0
        s.epoch = epoch
        if self.first_batches is not None:  # started in _resume_position for this epoch
            batches, self.first_batches = self.first_batches, None
        else:
            self.sampler.set_position(epoch, first_s * t.gradAccumSteps)
            batches = iter(self.loader)
        t_prev = time.perf_counter()
        self.losses.take_mean()  # the epoch's mean starts here
        cuda = self.topo.device.type == "cuda"
        for i in range(first_s, self.steps_per_epoch):
            wait = self.train_step(batches)
            compiled = self.compile_clock.stop(sync=cuda)
            now = time.perf_counter()
            dt, t_prev = now - t_prev, now
            ckpt = bool(
                t.checkpointEverySteps and s.step % t.checkpointEverySteps == 0 and i + 1 < self.steps_per_epoch
            )
            logged = self.is_log_step(s.step)
            if logged or ckpt:  # the only host syncs of the loop: the non-finite check, the logged loss
                self.losses.check(epoch)
            # an epoch's first step waits for loader start-up, a compiling step for the compiler
            self._record_step(dt, wait, steady=i != first_s and compiled is None, logged=logged)
            self._stop_if_signalled(epoch, i + 1)
            if ckpt:
                self.save_checkpoint(epoch, i + 1)
        self.losses.check(epoch)  # before the epoch's eval and checkpoint
        mean = self.losses.take_mean()
        if mean is not None:
            s.epoch_losses.append(mean)
        s.last_eval = self.evaluate() or s.last_eval
        s.evaluated_last = epoch == t.epochs - 1
        self.save_checkpoint(epoch + 1, 0)

    def _stop_if_signalled(self, epoch: int, step_in_epoch: int) -> None:
        """At a step boundary: if any rank got SIGTERM/SIGINT, checkpoint here and raise :class:`Preempted`."""
        signum = self.stop.agreed()
        if not signum:
            return
        self.losses.check(epoch)  # never checkpoint a non-finite model (the loss stays on the device until here)
        self.save_checkpoint(epoch, step_in_epoch)
        raise Preempted(signum, self.state.step, str(checkpoint.latest(self.out)))  # written before the barrier

    def is_log_step(self, step: int) -> bool:
        return step == 1 or step % self.t.logEverySteps == 0 or step == self.total_steps

    def _record_step(self, dt: float, wait: float, steady: bool, logged: bool) -> None:
        """Throughput bookkeeping on every rank; log line, Prometheus metrics and progress.json on rank 0.

        Per step only host-side figures; the loss and logit scale (device values: a sync) and
        progress.json at log steps only.
        """
        s, gb = self.state, self.global_batch
        if steady:
            s.steady_time += dt
            s.steady_samples += gb
            s.steady_wait += wait
        if s.first_step_at is None:
            s.first_step_at = time.time()
            if self.topo.is_main:
                log.info(
                    "first step done %.2fs after start (imports and preflight %.2fs, then model, data "
                    "and the step %.2fs)",
                    s.first_step_at - self.t_start,
                    self.t_train - self.t_start,
                    s.first_step_at - self.t_train,
                )
        m = self.metrics
        if m is None:
            return
        sps = s.steady_samples / s.steady_time if s.steady_time else gb / dt
        m.step.set(s.step)
        m.epoch.set(s.epoch)
        m.samples.inc(gb)
        m.sps.set(sps)
        m.lr.set(s.lr)
        m.step_seconds.observe(dt)
        m.data_wait.observe(wait)
        s.wait_since_log += wait
        s.steps_since_log += 1
        m.data_wait_share.set(s.steady_wait / s.steady_time if s.steady_time else wait / dt)
        if self.topo.device.type == "cuda":
            m.gpu_mem.set(torch.cuda.max_memory_allocated(self.topo.device))
        total = self.total_steps
        if logged:
            s.loss = float(self.losses.last)
            m.loss.set(s.loss)
            m.logit_scale.set(float(self.model.logit_scale.detach().exp()))
            log.info(
                "step %d/%d epoch %d loss %.4f lr %.3g samples/s %.1f data_wait %.3fs",
                s.step,
                total,
                s.epoch,
                s.loss,
                s.lr,
                sps,
                s.wait_since_log / s.steps_since_log,
            )
            s.wait_since_log, s.steps_since_log = 0.0, 0
            m.update(
                epoch=s.epoch,
                step=s.step,
                loss=s.loss,
                learningRate=s.lr,
                samplesPerSecond=round(sps, 2),
                etaSeconds=round((total - s.step) * gb / sps, 1) if sps else None,
            )

    # ---- evaluation -------------------------------------------------------------------------
    def evaluate_baseline(self) -> None:
        """Called once by :meth:`run` before the first optimizer step (every rank: it is collective):
        the start model on val/retention/zero-shot (``trainer.forgetting``). A resumed run reads the
        baseline its first attempt stored instead of evaluating resumed weights."""
        self.watch.baseline(self.model, self.metrics)

    def evaluate(self) -> dict:
        """Retrieval eval on the validation CSV (rank 0; the others wait at the barrier)."""
        result: dict = {}
        m = self.metrics
        if m is not None and self.val_table is not None:
            m.update(phase="evaluating", step=self.state.step)  # the step the eval's figures belong to
            val_ds = CaptionDataset(self.val_table, self.tf_val, self.tokenizer, self.t.seed, augment=False)
            result = evaluate(self.model, eval_loader(val_ds, self.t.batchSize, 0), self.topo.device, self.autocast)
            m.record_eval(result)
            self.watch.after_eval(self.model, self.state.epoch, self.state.step, result, m)
            m.update(phase="training")
            log.info(
                "eval epoch %d: val_loss %.4f  i2t R@1 %.3f R@5 %.3f  t2i R@1 %.3f R@5 %.3f",
                self.state.epoch,
                result["val_loss"],
                result["image_to_text_R@1"],
                result["image_to_text_R@5"],
                result["text_to_image_R@1"],
                result["text_to_image_R@5"],
            )
        distributed.barrier(self.topo)
        return result

    # ---- checkpoint, export -----------------------------------------------------------------
    def save_checkpoint(self, epoch: int, step_in_epoch: int) -> None:
        """Rank 0 writes everything the next step depends on (the unwrapped model: no ``module.`` keys)."""
        rngs = distributed.gather_objects(checkpoint.rng_state(), self.topo)
        if self.topo.is_main:
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "step": self.state.step,
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "world": self.topo.world,
                "rng": rngs,
            }
            path = checkpoint.save(
                self.out, self.state.step, state, self.t.keepCheckpoints, spec=self.spec, dataset=self.dataset_identity
            )
            if self.metrics is not None:
                self.metrics.record_checkpoint(str(path), self.state.step)
        distributed.barrier(self.topo)

    def export_final(self) -> dict:
        """Check that the ranks agree on the weights, then rank 0 writes ``final/``; returns its metrics."""
        s, t = self.state, self.t
        if not s.evaluated_last and self.val_table is not None:  # resumed after the last epoch's end: redo its eval
            s.epoch = t.epochs - 1
            s.last_eval = self.evaluate()
        # Every rank's weights must be identical after the last synchronised step: check, don't assume.
        digests = distributed.gather_objects(weights_digest(self.model), self.topo)
        m = self.metrics
        if m is None:
            return {}
        if len(set(digests)) != 1:
            log.error("ranks disagree on the final weights: %s", digests)
        m.update(phase="exporting")
        final = dict(s.last_eval)
        final.update(
            samples_per_second=round(s.steady_samples / s.steady_time, 2) if s.steady_time else None,
            data_wait_share=round(s.steady_wait / s.steady_time, 4) if s.steady_time else None,
            peak_gpu_memory_bytes=torch.cuda.max_memory_allocated(self.topo.device)
            if self.topo.device.type == "cuda"
            else 0,
            steps=s.step,
            epochs=t.epochs,
            world_size=self.topo.world,
            global_batch=self.global_batch,
            train_loss=s.loss,
            epoch_train_loss=s.epoch_losses,
            rank_weight_digests=digests,
            wall_seconds=round(time.time() - self.t_start, 2),
            first_step_seconds=round(s.first_step_at - self.t_start, 3) if s.first_step_at else None,
            compile_seconds=round(self.compile_clock.seconds, 2) if self.t.compile else None,
            compiled_graphs=self.compile_clock.graphs if self.t.compile else None,
            text_truncation=self.cut is not None,
        )
        export_state, message = self.watch.finish(self.model, final, self.oc_config)  # WiSE-FT sweep, selection
        path = export(self.model, self.oc_config, final, self.out, state=export_state)
        message = message or f"model exported to {path}"
        m.update(phase="done", step=s.step, modelPath=str(path), etaSeconds=0.0, message=message)
        # The controller stops polling /progress once node 0 has exited: the pod's termination message
        # carries the final progress (last eval included) into status.progress (docs/contracts.md).
        write_termination_log(termination_message(message, m.progress), termination_log_path())
        log.info("model exported to %s (load with open_clip.create_model_and_transforms('local-dir:%s'))", path, path)
        m.close(self.spec.metrics.finalScrapeWaitSeconds)
        return final

    # ---- the whole run ----------------------------------------------------------------------
    def run(self) -> dict:
        try:
            return self._run()
        except BaseException as err:  # /progress and progress.json say "failed", not a stale "training"
            if self.metrics is not None:
                self.metrics.update(
                    phase="failed", message=str(err).splitlines()[0] if str(err) else type(err).__name__
                )
                if isinstance(err, TrainerVerdict):  # python -m trainer puts it in the termination message
                    err.progress = self.metrics.progress
            raise

    def _run(self) -> dict:
        self.setup()
        self.model.train()
        self.evaluate_baseline()
        start_epoch = self.state.epoch
        for epoch in range(start_epoch, self.t.epochs):
            if self.watch.should_stop():  # early stopping (spec.evaluation.patience), also after a resume
                self.state.evaluated_last = epoch > start_epoch  # the previous epoch's eval ran in this process
                break
            self.train_epoch(epoch)
        final = self.export_final()
        self.cleanup()
        return final

    def cleanup(self) -> None:
        self.stop.close()
        distributed.barrier(self.topo)
        distributed.teardown()


def train(job: str, spec: TrainerSpec, report: DatasetReport, started_at: float | None = None) -> dict:
    """Run one rank of the job; ``started_at``: process start, for the start-up time in the log."""
    return Recipe(job, spec, report, started_at).run()
