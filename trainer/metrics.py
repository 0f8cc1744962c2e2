"""Rank 0's window on a run: Prometheus ``/metrics``, JSON ``/progress``, ``<output>/progress.json``.

Who uses it: ``trainer.train`` (updates it), the controller (reads ``/progress`` for ``kubectl
get``), Prometheus (scrapes ``/metrics``), ``kubeclip run`` (draws its progress bar from
``progress.json``). Metric names are a contract (``docs/contracts.md``); every series carries
``finetunejob="<job name>"``.

``spec.metrics.port: 0`` binds a free port; the port actually bound is logged and written to
``progress.json`` as ``metricsPort``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kubeclip.api import LastCheckpoint, Progress

log = logging.getLogger("trainer")

P = "kubeclip_trainer_"
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
WAIT_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0)


class TrainerMetrics:
    def __init__(self, job: str, output: str, epochs: int, total_steps: int, tensorboard: bool = False):
        self.job = job
        self.board = None  # spec.output.tensorboard: the same figures as TensorBoard event files
        if tensorboard:
            from trainer.tensorboard import Board

            self.board = Board(output)
        self.progress_path = Path(output) / "progress.json"
        self.registry = r = CollectorRegistry()
        lab = ["finetunejob"]
        self.step = Gauge(P + "step", "Optimizer steps completed.", lab, registry=r).labels(job)
        self.epoch = Gauge(P + "epoch", "Current epoch (0-based).", lab, registry=r).labels(job)
        self.total_steps = Gauge(P + "total_steps", "Optimizer steps of the whole run.", lab, registry=r).labels(job)
        self.samples = Counter(P + "samples", "Training samples processed by all ranks.", lab, registry=r).labels(job)
        self.sps = Gauge(
            P + "samples_per_second", "Training throughput of all ranks (samples per second).", lab, registry=r
        ).labels(job)
        self.loss = Gauge(P + "loss", "Training loss of the last optimizer step.", lab, registry=r).labels(job)
        self.lr = Gauge(P + "learning_rate", "Learning rate of the last optimizer step.", lab, registry=r).labels(job)
        self.logit_scale = Gauge(
            P + "logit_scale", "The model's contrastive temperature, exp(logit_scale).", lab, registry=r
        ).labels(job)
        self.step_seconds = Histogram(
            P + "step_seconds",
            "Wall time of one optimizer step, data wait included.",
            lab,
            buckets=STEP_BUCKETS,
            registry=r,
        ).labels(job)
        self.data_wait_share = Gauge(
            P + "data_wait_share",
            "Share of step wall time spent waiting for the next batch (0..1), over the steady steps so far (the first step of each epoch excluded).",
            lab,
            registry=r,
        ).labels(job)
        self.data_wait = Histogram(
            P + "data_wait_seconds",
            "Time one step waited for its batch from the data loader.",
            lab,
            buckets=WAIT_BUCKETS,
            registry=r,
        ).labels(job)
        # Eval gauges carry set="val" (spec.dataset.valCsv) or set="retention" (spec.evaluation.retentionCsv).
        sets = [*lab, "set"]
        self._recall = Gauge(
            P + "eval_recall", "Retrieval recall@k on an eval set.", [*sets, "direction", "k"], registry=r
        )
        self._mean_rank = Gauge(
            P + "eval_mean_rank", "Mean rank of the true match on an eval set.", [*sets, "direction"], registry=r
        )
        self._eval_loss = Gauge(P + "eval_loss", "Contrastive loss on an eval set.", sets, registry=r)
        self._base_recall = Gauge(
            P + "baseline_recall",
            "Retrieval recall@k of the start model (before the first step).",
            [*sets, "direction", "k"],
            registry=r,
        )
        self._zeroshot = Gauge(
            P + "zeroshot_accuracy", "Zero-shot top-k accuracy on spec.evaluation.zeroShot.", [*lab, "k"], registry=r
        )
        self._base_zeroshot = Gauge(
            P + "baseline_zeroshot_accuracy", "Zero-shot top-k accuracy of the start model.", [*lab, "k"], registry=r
        )
        self.last_ckpt = Gauge(
            P + "last_checkpoint_timestamp_seconds", "Unix time of the last committed checkpoint.", lab, registry=r
        ).labels(job)
        self.gpu_mem = Gauge(
            P + "gpu_memory_bytes", "Peak GPU memory allocated by this process (0 on CPU).", lab, registry=r
        ).labels(job)
        self.total_steps.set(total_steps)
        self.gpu_mem.set(0)
        self.progress = Progress(phase="starting", epochs=epochs, totalSteps=total_steps, updatedAt=time.time())
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port: int | None = None
        # GET /metrics begun (body generated) and answered (body written) so far. close() waits until
        # more have been answered than had begun when it was called: one scrape that read the final values
        # has reached Prometheus. Counting the start apart from the answer lets a scrape whose answer the
        # client already holds, but whose handler has not counted it yet, still mean "Prometheus is there".
        self._scrapes_begun = 0
        self._scrapes = 0
        self._scraped = threading.Condition()

    # -- updates ---------------------------------------------------------------------------
    def update(self, **fields) -> None:
        """Change progress fields (``Progress`` names) and persist ``progress.json``."""
        with self._lock:
            self.progress = self.progress.model_copy(update=dict(fields, updatedAt=time.time()))
            data = self.progress.model_dump_json()
        if self.board is not None and fields.get("loss") is not None:
            train = {
                "loss": fields["loss"],
                "lr": fields.get("learningRate"),
                "samples_per_second": fields.get("samplesPerSecond"),
            }
            self.board.scalars("train", train, self.progress.step)
        tmp = self.progress_path.with_name(f".progress.json.tmp-{os.getpid()}")
        self.progress_path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(data)
        os.replace(tmp, self.progress_path)

    def record_eval(self, result: dict[str, float], set_: str = "val") -> None:
        for direction in ("image_to_text", "text_to_image"):
            for k in (1, 5, 10):
                self._recall.labels(self.job, set_, direction, str(k)).set(result[f"{direction}_R@{k}"])
            self._mean_rank.labels(self.job, set_, direction).set(result[f"{direction}_mean_rank"])
        self._eval_loss.labels(self.job, set_).set(result["val_loss"])
        self.update(**{"eval" if set_ == "val" else set_: progress_eval(result)})
        if self.board is not None:
            self.board.scalars(set_, progress_eval(result), self.progress.step)

    def record_baseline(self, result: dict[str, float], set_: str) -> None:
        for direction in ("image_to_text", "text_to_image"):
            for k in (1, 5, 10):
                self._base_recall.labels(self.job, set_, direction, str(k)).set(result[f"{direction}_R@{k}"])
        self.update(**{"baseline" if set_ == "val" else f"{set_}Baseline": progress_eval(result)})
        if self.board is not None:
            self.board.scalars(f"baseline/{set_}", progress_eval(result), self.progress.step)

    def record_zeroshot(self, result: dict[str, float], baseline: bool = False) -> None:
        gauge = self._base_zeroshot if baseline else self._zeroshot
        for k in (1, 5):
            gauge.labels(self.job, str(k)).set(result[f"top{k}"])
        self.update(
            **{
                "zeroShotBaseline" if baseline else "zeroShot": {
                    k: round(v, 6) for k, v in result.items() if k.startswith("top")
                }
            }
        )
        if self.board is not None:
            top = {k: v for k, v in result.items() if k.startswith("top")}
            self.board.scalars("baseline/zeroshot" if baseline else "zeroshot", top, self.progress.step)

    def record_checkpoint(self, path: str, step: int) -> None:
        now = time.time()
        self.last_ckpt.set(now)
        self.update(lastCheckpoint=LastCheckpoint(path=path, step=step, time=now))

    # -- HTTP ------------------------------------------------------------------------------
    def serve(self, port: int, host: str = "") -> int:
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?", 1)[0]
                scraped = False
                if path == "/metrics":
                    with metrics._scraped:
                        metrics._scrapes_begun += 1
                    body, ctype = generate_latest(metrics.registry), CONTENT_TYPE_LATEST
                    scraped = True
                elif path == "/progress":
                    with metrics._lock:
                        body = metrics.progress.model_dump_json().encode()
                    ctype = "application/json"
                elif path in ("/healthz", "/"):
                    body, ctype = b"ok\n", "text/plain"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                if scraped:
                    with metrics._scraped:
                        metrics._scrapes += 1
                        metrics._scraped.notify_all()

            def log_message(self, *args):  # quiet: scrapes every 15 s would flood the log
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True).start()
        log.info("metrics: http://0.0.0.0:%d/metrics and /progress", self.port)
        self.update(metricsPort=self.port)
        return self.port

    def close(self, final_scrape_wait_s: float = 0.0) -> None:
        """Stop serving. With ``final_scrape_wait_s``, first wait (at most that long) for one more scrape of
        /metrics, so that Prometheus records the final step and evaluation before the pod ends; a run
        whose /metrics nobody has scraped does not wait."""
        if self._server is not None and final_scrape_wait_s > 0:
            with self._scraped:
                seen = self._scrapes_begun
                if seen:
                    t0 = time.monotonic()
                    log.info("metrics: waiting up to %.0f s for a final scrape of /metrics", final_scrape_wait_s)
                    self._scraped.wait_for(lambda: self._scrapes > seen, timeout=final_scrape_wait_s)
                    log.info(
                        "metrics: %s after %.1f s",
                        "final scrape served" if self._scrapes > seen else "no final scrape",
                        time.monotonic() - t0,
                    )
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self.board is not None:
            self.board.close()


def progress_eval(result: dict[str, float]) -> dict[str, float]:
    """The eval figures ``/progress`` carries: recalls, mean ranks, loss (rounded)."""
    return {k: round(v, 6) for k, v in result.items() if "@" in k or k.endswith(("mean_rank", "loss"))}


def read_progress(output: str) -> Progress | None:
    """``progress.json`` of a run, or None while it does not exist (or is being replaced)."""
    try:
        return Progress.model_validate(json.loads((Path(output) / "progress.json").read_text()))
    except (OSError, ValueError):
        return None
