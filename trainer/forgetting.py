"""Forgetting-aware fine-tuning for one run: what the model gained, what it lost, what to ship.

Who uses it: ``trainer.train``, through these calls (the only lines the loop needs)::

    watch = Forgetting(spec, topo, model, val_table, report.eval_sets, tf_val, tokenizer, autocast)
                                                    # after the model is built and broadcast
    watch.baseline(model, metrics)                  # before the first optimizer step
    watch.after_eval(model, epoch, step, result, metrics)  # rank 0, after each val eval
    if watch.should_stop(): ...                     # top of each epoch: early stopping
    state, message = watch.finish(model, final_metrics, oc_config)  # rank 0, before export

What it does, all on rank 0:

* **Baseline**: the start model is evaluated on val, retention (``spec.evaluation.retentionCsv``)
  and zero-shot (``spec.evaluation.zeroShot``) before the first step; the result is kept in
  ``<output>/checkpoints/baseline.json`` so a resumed run reports the same baseline.
* **Each eval**: retention and zero-shot next to the val eval (metrics ``set="retention"``,
  ``kubeclip_trainer_zeroshot_accuracy``), the best-so-far val metric (``spec.evaluation.metric``)
  and early stopping (``spec.evaluation.patience``), kept in ``checkpoints/evals.json`` (keyed by
  epoch, so an eval redone after a resume replaces its entry instead of counting twice). With
  ``spec.export.weights: best`` the best weights go to ``checkpoints/best.safetensors``.
* **End**: the WiSE-FT sweep (``trainer.wiseft``) over ``spec.export.alphas()``; alpha 0 is the
  baseline (same weights, same eval), alpha 1 the fine-tuned weights (the last eval when they are
  the last weights). ``spec.export.select`` picks the alpha for ``final/``.

Memory: the start weights θ_start are kept as one fp32 copy on the CPU from the moment the model is
built (only when a sweep is configured): 4 bytes per parameter, e.g. ~1.7 GB of host RAM for
ViT-L/14 (428 M parameters), ~0.6 GB for ViT-B/32. During the sweep a CPU copy of the fine-tuned
weights and one mix exist too: ~3x that at the peak. Nothing extra lives on the GPU. On resume the
start weights are what the model holds right after it is built (same spec, same seed), before the
checkpoint is loaded, so they are exact without being stored.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from kubeclip.api import LOWER_IS_BETTER, TrainerSpec
from trainer import distributed, wiseft
from trainer.data import CaptionDataset, eval_loader
from trainer.distributed import Topology
from trainer.evalsets import EvalTables
from trainer.evaluate import evaluate
from trainer.table import Rows

log = logging.getLogger("trainer")


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class Forgetting:
    def __init__(
        self,
        spec: TrainerSpec,
        topo: Topology,
        model: torch.nn.Module,
        val_table: Rows | None,
        eval_sets: EvalTables,
        transform,
        tokenizer,
        autocast,
    ):
        self.spec, self.topo, self.main = spec, topo, topo.is_main
        self.val = val_table
        self.transform, self.tokenizer, self.autocast = transform, tokenizer, autocast
        self.device = topo.device
        self.dir = Path(spec.output.path) / "checkpoints"
        #: the retention and zero-shot tables the preflight read (rank 0 evaluates them)
        self.tables = eval_sets if self.main and val_table is not None else EvalTables()
        self.start: dict | None = None
        self.base: dict = {}
        self.last: dict = {}  # latest {"val", "retention", "zeroshot"} of the fine-tuned model
        self.evals = {"metric": spec.evaluation.metric, "evals": [], "stopped": False}
        if not self.main or val_table is None:
            return
        if spec.export.sweeps():
            self.start = wiseft.cpu_state(model)
        self.evals = _read_json(self.dir / "evals.json") or self.evals

    # -- evaluation ------------------------------------------------------------------------
    def evaluate_all(self, model, val: dict | None = None) -> dict:
        """``{"val": ..., "retention": ..., "zeroshot": ...}`` of ``model`` (``val`` reused when given)."""
        bs = self.spec.training.batchSize
        out = {}

        def retrieval(table):
            ds = CaptionDataset(table, self.transform, self.tokenizer, self.spec.training.seed, augment=False)
            return evaluate(model, eval_loader(ds, bs, 0), self.device, self.autocast)

        out["val"] = val if val is not None else retrieval(self.val)
        if self.tables.retention is not None:
            out["retention"] = retrieval(self.tables.retention)
        if self.tables.zeroshot is not None:
            from trainer.zeroshot import accuracy

            zs = self.spec.evaluation.zeroShot
            if zs is None:  # tables.zeroshot exists only when it is configured
                raise RuntimeError("a zero-shot table without spec.evaluation.zeroShot")
            out["zeroshot"] = accuracy(
                model,
                self.tables.zeroshot,
                self.transform,
                self.tokenizer,
                zs.templates,
                bs,
                self.device,
                self.autocast,
            )
        return out

    def _record(self, metrics, result: dict, baseline: bool) -> None:
        """Gauges and /progress; the val eval itself is recorded by the loop (``record_eval``)."""
        for set_ in ("val", "retention"):
            if set_ not in result:
                continue
            if baseline:
                metrics.record_baseline(result[set_], set_)
            elif set_ != "val":
                metrics.record_eval(result[set_], set_)
        if "zeroshot" in result:
            metrics.record_zeroshot(result["zeroshot"], baseline=baseline)

    @staticmethod
    def describe(result: dict) -> str:
        parts = [f"val i2t R@1 {result['val']['image_to_text_R@1']:.3f}"]
        if "retention" in result:
            parts.append(f"retention i2t R@1 {result['retention']['image_to_text_R@1']:.3f}")
        if "zeroshot" in result:
            parts.append(f"zero-shot top1 {result['zeroshot']['top1']:.3f} top5 {result['zeroshot']['top5']:.3f}")
        return ", ".join(parts)

    # -- hooks -----------------------------------------------------------------------------
    def baseline(self, model, metrics) -> None:
        """Rank 0: evaluate the start model once (or reload that result after a resume)."""
        if self.main and self.val is not None:
            path = self.dir / "baseline.json"
            self.base = _read_json(path) or {}
            if not self.base:
                metrics.update(phase="evaluating")
                self.base = self.evaluate_all(model)
                _write_json(path, self.base)
                metrics.update(phase="training")
            self._record(metrics, self.base, baseline=True)
            log.info("baseline (start model, step 0): %s", self.describe(self.base))
        distributed.barrier(self.topo)

    def after_eval(self, model, epoch: int, step: int, val: dict, metrics) -> None:
        """Rank 0, after the val eval of an epoch end: retention, zero-shot, best weights, patience."""
        self.last = self.evaluate_all(model, val)
        self._record(metrics, self.last, baseline=False)
        if len(self.last) > 1:
            log.info("eval epoch %d: %s (baseline: %s)", epoch, self.describe(self.last), self.describe(self.base))
        ev = self.spec.evaluation
        if self.evals.get("stopped"):
            return
        value = float(val[ev.metric])
        entries = [e for e in self.evals["evals"] if e["epoch"] < epoch] + [
            {"epoch": epoch, "step": step, "value": value}
        ]
        best = self._best(entries)
        self.evals.update(evals=entries, best=best)
        if best["epoch"] == epoch and self.spec.export.weights == "best":
            from safetensors.torch import save_file

            tmp = self.dir / f".best.safetensors.tmp-{os.getpid()}"
            self.dir.mkdir(parents=True, exist_ok=True)
            save_file(wiseft.cpu_state(model), str(tmp))
            os.replace(tmp, self.dir / "best.safetensors")
            log.info(
                "best %s so far (%.4f, epoch %d): weights kept in %s",
                ev.metric,
                value,
                epoch,
                self.dir / "best.safetensors",
            )
        since = sum(1 for e in entries if e["epoch"] > best["epoch"])
        if ev.patience is not None and since >= ev.patience:
            self.evals["stopped"] = True
            log.info(
                "early stopping: %s has not improved by more than %g for %d evals (best %.4f at epoch %d)",
                ev.metric,
                ev.minDelta,
                since,
                best["value"],
                best["epoch"],
            )
        _write_json(self.dir / "evals.json", self.evals)

    def _best(self, entries: list[dict]) -> dict:
        lower = self.spec.evaluation.metric in LOWER_IS_BETTER
        delta = self.spec.evaluation.minDelta
        best = entries[0]
        for e in entries[1:]:
            if (e["value"] < best["value"] - delta) if lower else (e["value"] > best["value"] + delta):
                best = e
        return best

    def should_stop(self) -> bool:
        """Same answer on every rank: did early stopping end training (also true after a resume)?"""
        return bool(distributed.broadcast_object(bool(self.evals.get("stopped")) if self.main else None, self.topo))

    def finish(self, model, final_metrics: dict, config: dict) -> tuple[dict | None, str]:
        """Rank 0: the sweep and the selection. Returns ``(weights for final/ or None = the model's,
        message)``; the one-line message opens the pod's termination message (``trainer.train``)."""
        if self.val is None:
            return None, ""
        from trainer.export import export

        spec = self.spec.export
        final_metrics["baseline"] = self.base
        for part in ("retention", "zeroshot"):
            if part in self.last:
                final_metrics[part] = self.last[part]
        if self.evals.get("best"):
            final_metrics["best"] = dict(self.evals["best"], metric=self.spec.evaluation.metric)
        final_metrics["stopped_early"] = bool(self.evals.get("stopped"))
        best_path = self.dir / "best.safetensors"
        use_best = spec.weights == "best" and best_path.is_file()
        ft = None
        if use_best:
            from safetensors.torch import load_file

            ft = load_file(str(best_path))
            log.info(
                "exporting the best weights (epoch %d, %s %.4f) instead of the last",
                self.evals["best"]["epoch"],
                self.spec.evaluation.metric,
                self.evals["best"]["value"],
            )
        if not spec.sweeps():
            final_metrics["exported_alpha"] = 1.0
            return ft, f"{'best' if use_best else 'last'} weights exported; {self.summary(final_metrics)}"
        ft = ft if ft is not None else wiseft.cpu_state(model)
        if self.start is None:  # captured in __init__ whenever spec.export.sweeps()
            raise RuntimeError("the WiSE-FT sweep needs the start weights, which were not kept")
        table = []
        dtypes = wiseft.model_dtypes(model)  # a pure bf16/fp16 model: mixes rounded as it evaluates them
        for alpha in spec.alphas():
            if alpha == 0.0:
                result = self.base
            elif alpha == 1.0 and not use_best and self.last:
                result = self.last
            else:
                model.load_state_dict(wiseft.interpolate(self.start, ft, alpha, dtypes))
                result = self.evaluate_all(model)
            table.append({"alpha": alpha, **result})
        model.load_state_dict(ft)
        alpha, reason = wiseft.select(table, spec)
        state = ft if alpha == 1.0 else wiseft.interpolate(self.start, ft, alpha, dtypes)
        final_metrics.update(wiseft=table, exported_alpha=alpha, export_policy=reason)
        lines = wiseft.table_lines(table)
        log.info("WiSE-FT (%s weights):\n  %s\n%s", "best" if use_best else "last", "\n  ".join(lines), reason)
        if spec.allAlphas:
            for e in table:
                a = e["alpha"]
                path = export(
                    None,
                    config,
                    {"alpha": a, **{k: v for k, v in e.items() if k != "alpha"}},
                    self.spec.output.path,
                    state=ft if a == 1.0 else wiseft.interpolate(self.start, ft, a, dtypes),
                    name=f"wiseft/alpha-{a:.2f}",
                )
                log.info("alpha %.2f exported to %s", a, path)
        return state, f"exported alpha {alpha:g}: {reason}; " + " | ".join(lines)

    def summary(self, m: dict) -> str:
        parts = []
        b = self.base
        if b and "image_to_text_R@1" in m:
            parts.append(f"val i2t R@1 {m['image_to_text_R@1']:.3f} (start {b['val']['image_to_text_R@1']:.3f})")
        if "retention" in m and "retention" in b:
            parts.append(
                f"retention R@1 {m['retention']['image_to_text_R@1']:.3f} (start {b['retention']['image_to_text_R@1']:.3f})"
            )
        if "zeroshot" in m and "zeroshot" in b:
            parts.append(f"zero-shot top1 {m['zeroshot']['top1']:.3f} (start {b['zeroshot']['top1']:.3f})")
        return ", ".join(parts)
