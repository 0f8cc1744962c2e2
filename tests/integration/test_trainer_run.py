"""A real 2-process gloo run through ``kubeclip run``: learning, rank agreement, metrics, export.

One run (module fixture) of a tiny OpenCLIP model on a generated dataset, started exactly as a
user would (``kubeclip run JOB.yaml``: the elastic launcher, 2 processes, gloo on CPU). While it
trains, the test scrapes rank 0's ``/metrics`` and ``/progress`` (port 0 = a free port, read from
``progress.json``) and runs ``promtool check metrics`` on the scrapes. Afterwards it checks that
the loss went down, that both ranks ended with identical weights (each rank hashes its own and
rank 0 records all hashes), and that ``final/`` loads through open_clip with the trained weights.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pytest
from trainer_helpers import VENV_BIN, env, manifest, promtool

pytestmark = pytest.mark.slow

CONTRACT_NAMES = [
    "kubeclip_trainer_step",
    "kubeclip_trainer_epoch",
    "kubeclip_trainer_total_steps",
    "kubeclip_trainer_samples_total",
    "kubeclip_trainer_samples_per_second",
    "kubeclip_trainer_loss",
    "kubeclip_trainer_learning_rate",
    "kubeclip_trainer_logit_scale",
    "kubeclip_trainer_step_seconds_bucket",
    "kubeclip_trainer_data_wait_seconds_bucket",
    "kubeclip_trainer_eval_recall",
    "kubeclip_trainer_eval_mean_rank",
    "kubeclip_trainer_eval_loss",
    "kubeclip_trainer_last_checkpoint_timestamp_seconds",
    "kubeclip_trainer_gpu_memory_bytes",
    "kubeclip_trainer_data_wait_share",
]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    out = root / "out"
    job = manifest(
        root,
        "ddp-run",
        out,
        training={"epochs": 4, "batchSize": 8, "workers": 1, "checkpointEverySteps": 4, "logEverySteps": 2},
    )
    termination_log = root / "termination-log"  # what a pod's /dev/termination-log would hold
    termination_log.write_text("")
    with open(root / "console.log", "w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [str(VENV_BIN / "kubeclip"), "run", str(job)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**env(), "KUBECLIP_TERMINATION_LOG": str(termination_log)},
        )
    scrapes = {}
    progress_path = out / "progress.json"
    deadline = time.time() + 600
    scraped_at = 0.0
    while proc.poll() is None and time.time() < deadline:
        try:
            p = json.loads(progress_path.read_text())
        except (OSError, ValueError):
            p = None
        if p and p.get("metricsPort"):
            base = f"http://127.0.0.1:{p['metricsPort']}"
            try:
                if p.get("phase") == "training":
                    if "training" not in scrapes and p.get("step", 0) >= 1:
                        scrapes["training"] = (get(base + "/metrics"), get(base + "/progress"))
                    if "after_eval" not in scrapes and p.get("eval"):
                        scrapes["after_eval"] = (get(base + "/metrics"), get(base + "/progress"))
                if len(scrapes) == 2 and time.time() - scraped_at > 0.5:
                    # then on, like Prometheus: a scrape every 0.5 s until the run ends. Rank 0 has
                    # been scraped, so it waits for one more after the export (finalScrapeWaitSeconds,
                    # 60 s): this one, at once, instead of the whole minute.
                    scraped_at = time.time()
                    get(base + "/metrics")
            except OSError:
                pass
        time.sleep(0.02)
    rc = proc.wait(timeout=60)
    return {
        "rc": rc,
        "out": out,
        "console": (root / "console.log").read_text(),
        "scrapes": scrapes,
        "root": root,
        "termination": termination_log.read_text(),
    }


def test_kubeclip_run_succeeds_and_says_where_the_model_went(run):
    assert run["rc"] == 0, run["console"][-4000:]
    assert f"model: {(run['out'] / 'final').resolve()}" in run["console"]


def test_loss_decreases_and_ranks_agree(run):
    m = json.loads((run["out"] / "final" / "metrics.json").read_text())
    assert m["world_size"] == 2
    losses = m["epoch_train_loss"]
    assert len(losses) == 4, losses
    assert losses[-1] < losses[0] - 0.05, losses
    digests = m["rank_weight_digests"]
    assert len(digests) == 2, digests
    assert digests[0] == digests[1], digests


def test_final_metrics_keys(run):
    m = json.loads((run["out"] / "final" / "metrics.json").read_text())
    for key in (
        "image_to_text_R@1",
        "text_to_image_R@1",
        "image_to_text_R@5",
        "text_to_image_R@5",
        "image_to_text_R@10",
        "text_to_image_mean_rank",
        "val_loss",
        "samples_per_second",
    ):
        assert isinstance(m[key], float), key
    assert 0.0 <= m["image_to_text_R@1"] <= m["image_to_text_R@5"] <= m["image_to_text_R@10"] <= 1.0
    # a share of step time; with one loader worker per rank on a busy CPU it is not exactly 0
    assert isinstance(m["data_wait_share"], float), m["data_wait_share"]
    assert 0.0 < m["data_wait_share"] < 1.0, m["data_wait_share"]
    assert m["peak_gpu_memory_bytes"] == 0  # a CPU run


def sample(text: str, name: str) -> float:
    line = next(ln for ln in text.splitlines() if ln.startswith(name + "{"))
    return float(line.rsplit(" ", 1)[1])


def test_data_wait_share_gauge_agrees_with_the_histograms(run):
    text = run["scrapes"]["after_eval"][0]
    share = sample(text, "kubeclip_trainer_data_wait_share")
    wait, step = (
        sample(text, "kubeclip_trainer_data_wait_seconds_sum"),
        sample(text, "kubeclip_trainer_step_seconds_sum"),
    )
    # the gauge leaves out each epoch's first step (loader start-up), the histograms count it
    assert 0.0 < share < 1.0, (share, wait, step)
    assert 0.0 < wait < step, (share, wait, step)


def test_export_reloads_through_open_clip_with_the_trained_weights(run):
    import open_clip
    import torch

    from trainer.checkpoint import latest, load

    final = run["out"] / "final"
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{final}")
    trained = load(latest(str(run["out"])))["model"]  # the epoch-end checkpoint holds the final weights
    loaded = model.state_dict()
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    assert preprocess.transforms[0].size in (32, (32, 32), [32, 32])  # preprocess_cfg travelled too


def test_metrics_endpoint_passes_promtool_and_has_the_contract_names(run):
    assert set(run["scrapes"]) == {"training", "after_eval"}, "the run ended before both scrapes"
    tool = promtool()
    for phase, (text, _) in run["scrapes"].items():
        check = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, f"{phase}: {check.stdout}{check.stderr}"
        assert 'finetunejob="ddp-run"' in text
    # the scrape after the export: Prometheus records the final step and eval before the pod ends
    (rank0,) = run["out"].glob("logs/*/attempt_0/0/stderr.log")
    assert "metrics: final scrape served after" in rank0.read_text(), rank0.read_text()[-2000:]
    text = run["scrapes"]["after_eval"][0]
    for name in CONTRACT_NAMES:
        assert f"\n{name}" in text or text.startswith(name), name
    assert 'kubeclip_trainer_eval_recall{direction="image_to_text",finetunejob="ddp-run",k="5",set="val"}' in text


def test_progress_endpoint_serves_the_progress_model(run):
    from kubeclip.api import Progress

    p = Progress.model_validate_json(run["scrapes"]["training"][1])
    assert p.phase == "training"
    assert p.totalSteps == 24
    assert 1 <= p.step <= 24
    done = Progress.model_validate_json((run["out"] / "progress.json").read_text())
    assert done.phase == "done"
    assert done.step == 24
    assert done.modelPath == str(run["out"] / "final")
    assert done.lastCheckpoint is not None
    assert done.lastCheckpoint.step == 24


def test_termination_message_carries_the_final_progress_and_last_eval(run):
    """What the controller maps into status.progress once node 0 has exited (docs/contracts.md,
    "Progress"): the last step, and the last eval, which is the one in final/metrics.json."""
    from controller.status import progress_status
    from kubeclip.api import TERMINATION_MESSAGE_MAX_BYTES, read_termination_message

    message = run["termination"]
    assert 0 < len(message.encode()) <= TERMINATION_MESSAGE_MAX_BYTES
    text, final = read_termination_message(message)
    m = json.loads((run["out"] / "final" / "metrics.json").read_text())
    assert text.startswith("last weights exported; val i2t R@1"), text
    assert final is not None, message
    assert final.phase == "done"
    assert final.step == final.totalSteps == m["steps"] == 24
    assert final.eval["image_to_text_R@1"] == pytest.approx(m["image_to_text_R@1"], abs=1e-6)
    assert final.loss == pytest.approx(m["train_loss"], rel=1e-6)
    status = progress_status(final.model_dump(mode="json", exclude_unset=True))
    assert status["percent"] == 100
    assert status["recallAt1"] == round(m["image_to_text_R@1"], 4)


def test_kubeclip_run_bad_csv_exits_3_with_the_preflight_line(tmp_path):
    from trainer_helpers import dataset

    train_csv, _ = dataset(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text(train_csv.read_text().replace(",", ";").replace("filepath", "path"))
    job = tmp_path / "job.yaml"
    job.write_text(
        "apiVersion: kubeclip.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: bad}\n"
        f"spec: {{model: {{name: ViT-B-32}}, dataset: {{trainCsv: {bad}, separator: ','}}, output: {{path: {tmp_path / 'o'}}}}}\n"
    )
    t0 = time.time()
    proc = subprocess.run(
        [str(VENV_BIN / "kubeclip"), "run", str(job)], capture_output=True, text=True, env=env(), timeout=120
    )
    assert proc.returncode == 3, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("preflight: spec.dataset.trainCsv")
    assert "columns found: ['path;caption']" in line
    assert "separator ';'" in line
    assert time.time() - t0 < 60


def test_the_shipped_local_example_runs_and_learns(tmp_path):
    """``kubeclip run examples/local-cpu.yaml`` (what ``make demo`` runs), from the repository root."""
    from trainer_helpers import REPO

    from trainer.sample_data import DEMO, generate

    generate(REPO / "runs" / "demo" / "data", **DEMO)  # the example's relative dataset paths
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(VENV_BIN / "kubeclip"), "run", "examples/local-cpu.yaml", "--output", str(out), "--quiet"],
        capture_output=True,
        text=True,
        env=env(),
        cwd=REPO,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = json.loads((out / "final" / "metrics.json").read_text())
    assert m["world_size"] == 2
    assert m["steps"] == 32
    # chance level: val_loss ~ ln(32) = 3.47, R@1 = 1/64; the seeded run reaches ~1.96 and ~0.25
    assert m["val_loss"] < 3.0, m
    assert m["image_to_text_R@1"] > 0.1, m
