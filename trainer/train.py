"""The training loop: fine-tune an OpenCLIP model contrastively on a CSV of image-caption pairs.

Launch it any of these ways (each rank runs :func:`train`):

    python -m trainer job.yaml                                   # one process (CPU or one GPU)
    torchrun --standalone --nproc_per_node 2 -m trainer job.yaml # N processes on this machine
    kubeclip run job.yaml                                        # same, numProcPerNode processes,
                                                                 #   with a progress bar
    python -m trainer.node /etc/kubeclip/job.yaml                # in a pod: preflight, then torchrun
                                                                 #   with the PET_* env the controller sets

Read top to bottom: topology → seed → model → data → optimizer → resume → for each optimizer
step: set lr, forward/backward every micro-batch (features gathered across ranks), all-reduce
gradients, clip, AdamW step, log, checkpoint → at each epoch end: eval, checkpoint → export.
A run restarted with the same command continues from the newest checkpoint in
``<output>/checkpoints`` at the exact step (see ``trainer.checkpoint`` and ``trainer.data``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random
import time
from typing import Optional

import numpy as np
import torch

from trainer import checkpoint, distributed
from trainer.config import TrainerSpec
from trainer.data import CaptionDataset, ShardedBatchSampler, eval_loader, train_loader
from trainer.evaluate import evaluate
from trainer.export import export
from trainer.loss import contrastive_loss
from trainer.model import build, param_groups
from trainer.optim import AdamW, default_warmup, lr_at
from trainer.preflight import DatasetReport, read_table

log = logging.getLogger("trainer")

#: CLIP clamps its learned temperature to at most 100 (logit_scale = ln 100) for stability.
MAX_LOGIT_SCALE = math.log(100)


def precision_setup(precision: str, device: torch.device):
    """Return ``(model dtype, autocast factory, needs GradScaler)``; CPU runs amp modes in fp32."""
    cuda = device.type == "cuda"
    if precision == "bf16":
        return torch.bfloat16, contextlib.nullcontext, False
    if precision == "fp16" and cuda:
        return torch.float16, contextlib.nullcontext, False
    if cuda and precision == "amp_bf16":
        return torch.float32, lambda: torch.autocast("cuda", dtype=torch.bfloat16), False
    if cuda and precision in ("amp", "amp_fp16"):
        return torch.float32, lambda: torch.autocast("cuda", dtype=torch.float16), True
    return torch.float32, contextlib.nullcontext, False


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer: ranks compare theirs to prove they hold the same model."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def train(job: str, spec: TrainerSpec, report: Optional[DatasetReport] = None, started_at: Optional[float] = None) -> dict:
    """Run one rank of the job; ``started_at``: process start, for the start-up time in the log."""
    t_start = started_at or time.time()
    t_train = time.time()
    topo = distributed.setup()
    t = spec.training
    out = spec.output.path
    if topo.is_main:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    else:
        logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s rank{topo.rank} %(message)s", force=True)

    # Same seed on every rank: identical initial weights (rank 0's are broadcast anyway).
    random.seed(t.seed)
    np.random.seed(t.seed)
    torch.manual_seed(t.seed)

    # ---- model ------------------------------------------------------------------------------
    model, tf_train, tf_val, tokenizer, oc_config = build(spec, topo.device)
    dtype, autocast, use_scaler = precision_setup(t.precision, topo.device)
    if dtype != torch.float32:
        model.to(dtype)
    distributed.broadcast_parameters(model, topo)
    trainable = [p for p in model.parameters() if p.requires_grad]

    # ---- data -------------------------------------------------------------------------------
    train_table = report.train if report else read_table(spec.dataset.trainCsv, spec)
    val_table = (report.val if report else read_table(spec.dataset.valCsv, spec, "spec.dataset.valCsv")) if spec.dataset.valCsv else None
    sampler = ShardedBatchSampler(len(train_table), t.batchSize, topo.world, topo.rank, t.seed)
    loader = None
    if topo.device.type == "cuda" and t.gpuDecode:  # JPEG decode, crop and resize on the GPU (trainer.gpu_data)
        from trainer.gpu_data import gpu_train_loader

        loader = gpu_train_loader(train_table, tf_train, tokenizer, t.seed, sampler, t.workers, topo.device)
    if loader is None:
        loader = train_loader(CaptionDataset(train_table, tf_train, tokenizer, t.seed, augment=True), sampler, t.workers, topo.device.type == "cuda")
    steps_per_epoch = sampler.batches_per_epoch // t.gradAccumSteps
    total_steps = steps_per_epoch * t.epochs
    warmup = t.warmupSteps if t.warmupSteps is not None else default_warmup(total_steps)
    global_batch = t.batchSize * topo.world * t.gradAccumSteps

    # ---- resume position, then start the loader early ---------------------------------------
    # Its workers decode the first batches while the optimizer and metrics are set up below.
    step, start_epoch, start_step_in_epoch = 0, 0, 0
    latest = distributed.broadcast_object(str(checkpoint.latest(out) or ""), topo)
    ck = checkpoint.load(latest) if latest else None
    if ck is not None:
        step, start_epoch, start_step_in_epoch = ck["step"], ck["epoch"], ck["step_in_epoch"]
    first_batches = None
    if start_epoch < t.epochs:
        sampler.set_position(start_epoch, start_step_in_epoch * t.gradAccumSteps)
        first_batches = iter(loader)

    # ---- optimizer, and the rest of the resume state ---------------------------------------
    opt = AdamW(param_groups(model, t.weightDecay))
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        if ck.get("world") != topo.world:
            log.warning("checkpoint was written by %s processes, this run has %d: the data order after resume "
                        "differs from an uninterrupted run (weights, optimizer and step are restored)", ck.get("world"), topo.world)
        rngs = ck["rng"]
        checkpoint.set_rng_state(rngs[topo.rank] if topo.rank < len(rngs) else rngs[0])
        log.info("resumed from %s: step %d (epoch %d, step %d of it)", latest, step, start_epoch, start_step_in_epoch)
        del ck

    metrics = None
    if topo.is_main:
        from trainer.metrics import TrainerMetrics

        metrics = TrainerMetrics(job, out, t.epochs, total_steps)
        metrics.serve(spec.metrics.port)
        metrics.step.set(step)
        metrics.update(phase="training", step=step, epoch=start_epoch)
        log.info(
            "training %s: %d processes on %s, %d steps (%d/epoch x %d epochs), global batch %d, warmup %d, precision %s",
            job, topo.world, topo.device.type, total_steps, steps_per_epoch, t.epochs, global_batch, warmup, t.precision,
        )

    def save_checkpoint(epoch: int, step_in_epoch: int) -> None:
        rngs = distributed.gather_objects(checkpoint.rng_state(), topo)
        if topo.is_main:
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "step": step,
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "world": topo.world,
                "rng": rngs,
            }
            path = checkpoint.save(out, step, state, t.keepCheckpoints)
            metrics.record_checkpoint(str(path), step)
        distributed.barrier(topo)

    def run_eval() -> dict:
        result = {}
        if topo.is_main and val_table is not None:
            metrics.update(phase="evaluating")
            val_ds = CaptionDataset(val_table, tf_val, tokenizer, t.seed, augment=False)
            result = evaluate(model, eval_loader(val_ds, t.batchSize, 0), topo.device, autocast)
            metrics.record_eval(result)
            metrics.update(phase="training")
            log.info(
                "eval epoch %d: val_loss %.4f  i2t R@1 %.3f R@5 %.3f  t2i R@1 %.3f R@5 %.3f",
                epoch, result["val_loss"], result["image_to_text_R@1"], result["image_to_text_R@5"],
                result["text_to_image_R@1"], result["text_to_image_R@5"],
            )
        distributed.barrier(topo)
        return result

    # ---- the loop ---------------------------------------------------------------------------
    model.train()
    steady_time, steady_samples, steady_wait = 0.0, 0, 0.0
    last_eval: dict = {}
    epoch_losses: list[float] = []  # mean training loss of each epoch this process ran
    evaluated_last = False
    loss_value = float("nan")
    first_step_at: Optional[float] = None
    last_progress_write = 0.0
    for epoch in range(start_epoch, t.epochs):
        first_s = start_step_in_epoch if epoch == start_epoch else 0
        if epoch == start_epoch and first_batches is not None:
            batches = first_batches
        else:
            sampler.set_position(epoch, first_s * t.gradAccumSteps)
            batches = iter(loader)
        t_prev = time.perf_counter()
        losses_this_epoch: list[float] = []
        for s in range(first_s, steps_per_epoch):
            lr = lr_at(step, t.learningRate, warmup, total_steps)
            opt.set_lr(lr)
            wait = 0.0
            loss_sum = 0.0
            for _ in range(t.gradAccumSteps):
                t0 = time.perf_counter()
                images, tokens = next(batches)
                wait += time.perf_counter() - t0
                images = images.to(topo.device, dtype, non_blocking=True)
                tokens = tokens.to(topo.device, non_blocking=True)
                with autocast():
                    img = model.encode_image(images, normalize=True)
                    txt = model.encode_text(tokens, normalize=True)
                    # Global-batch loss; only this rank's features carry gradient (see distributed.py).
                    loss = contrastive_loss(
                        distributed.gather_features(img, topo),
                        distributed.gather_features(txt, topo),
                        model.logit_scale.exp(),
                    )
                loss_sum += loss.item()
                loss = loss / t.gradAccumSteps
                (scaler.scale(loss) if scaler is not None else loss).backward()
            distributed.all_reduce_gradients(trainable, topo)
            if scaler is not None:
                scaler.unscale_(opt)
            if t.gradClipNorm:
                torch.nn.utils.clip_grad_norm_(trainable, t.gradClipNorm)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            step += 1
            loss_value = loss_sum / t.gradAccumSteps
            losses_this_epoch.append(loss_value)

            now = time.perf_counter()
            dt, t_prev = now - t_prev, now
            if s != first_s:  # the first step of an epoch waits for loader start-up: not steady state
                steady_time += dt
                steady_samples += global_batch
                steady_wait += wait
            if first_step_at is None:
                first_step_at = time.time()
                if topo.is_main:
                    log.info("first step done %.2fs after start (imports and preflight %.2fs, then model, data "
                             "and the step %.2fs)", first_step_at - t_start, t_train - t_start, first_step_at - t_train)
            if topo.is_main:
                sps = steady_samples / steady_time if steady_time else global_batch / dt
                metrics.step.set(step)
                metrics.epoch.set(epoch)
                metrics.samples.inc(global_batch)
                metrics.sps.set(sps)
                metrics.loss.set(loss_value)
                metrics.lr.set(lr)
                metrics.logit_scale.set(model.logit_scale.exp().item())
                metrics.step_seconds.observe(dt)
                metrics.data_wait.observe(wait)
                metrics.data_wait_share.set(steady_wait / steady_time if steady_time else wait / dt)
                if topo.device.type == "cuda":
                    metrics.gpu_mem.set(torch.cuda.max_memory_allocated(topo.device))
                if step == 1 or step % t.logEverySteps == 0 or step == total_steps:
                    log.info(
                        "step %d/%d epoch %d loss %.4f lr %.3g samples/s %.1f data_wait %.3fs",
                        step, total_steps, epoch, loss_value, lr, sps, wait,
                    )
                if step == 1 or step % t.logEverySteps == 0 or now - last_progress_write > 1.0 or step == total_steps:
                    last_progress_write = now
                    metrics.update(
                        epoch=epoch, step=step, loss=loss_value, learningRate=lr, samplesPerSecond=round(sps, 2),
                        etaSeconds=round((total_steps - step) * global_batch / sps, 1) if sps else None,
                    )
            if t.checkpointEverySteps and step % t.checkpointEverySteps == 0 and s + 1 < steps_per_epoch:
                save_checkpoint(epoch, s + 1)
        # ---- epoch end: eval, then a checkpoint that resumes at the next epoch -----------------
        if losses_this_epoch:
            epoch_losses.append(sum(losses_this_epoch) / len(losses_this_epoch))
        last_eval = run_eval() or last_eval
        evaluated_last = epoch == t.epochs - 1
        save_checkpoint(epoch + 1, 0)

    # ---- export -----------------------------------------------------------------------------
    if not evaluated_last and val_table is not None:  # resumed after the last epoch's end: redo its eval
        epoch = t.epochs - 1
        last_eval = run_eval()
    # Every rank's weights must be identical after the last all-reduced step: check, don't assume.
    digests = distributed.gather_objects(weights_digest(model), topo)
    final_metrics: dict = {}
    if topo.is_main:
        if len(set(digests)) != 1:
            log.error("ranks disagree on the final weights: %s", digests)
        metrics.update(phase="exporting")
        final_metrics = dict(last_eval)
        final_metrics.update(
            samples_per_second=round(steady_samples / steady_time, 2) if steady_time else None,
            data_wait_share=round(steady_wait / steady_time, 4) if steady_time else None,
            peak_gpu_memory_bytes=torch.cuda.max_memory_allocated(topo.device) if topo.device.type == "cuda" else 0,
            steps=step,
            epochs=t.epochs,
            world_size=topo.world,
            global_batch=global_batch,
            train_loss=loss_value,
            epoch_train_loss=epoch_losses,
            rank_weight_digests=digests,
            wall_seconds=round(time.time() - t_start, 2),
            first_step_seconds=round(first_step_at - t_start, 3) if first_step_at else None,
        )
        path = export(model, oc_config, final_metrics, out)
        metrics.update(phase="done", step=step, modelPath=str(path), etaSeconds=0.0, message=f"model exported to {path}")
        log.info("model exported to %s (load with open_clip.create_model_and_transforms('local-dir:%s'))", path, path)
        metrics.close()
    distributed.barrier(topo)
    distributed.teardown()
    return final_metrics
