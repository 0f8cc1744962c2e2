"""Forgetting-aware fine-tuning, the parts that need no training run.

Config (``spec.evaluation`` / ``spec.export``: bad values fail with one line naming the key), the
preflight of the retention and zero-shot CSVs (real CSV and PNG files; same one-line errors as the
train/val CSVs), WiSE-FT's interpolation and selection policies on plain tensors and tables, and
the controller's mapping of the trainer's progress onto ``status.progress`` (gain, retention drop)
and the Succeeded message. The effect itself (a model that forgets, a mix that recovers) is in
``tests/integration/test_forgetting.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from controller.status import completed_message, progress_status
from kubeclip.api import ConfigError, ExportSpec, parse_spec
from trainer import wiseft
from trainer.preflight import run_preflight
from trainer.table import PreflightError


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def data(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    for i in range(6):
        Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(img / f"{i}.png")
    write_csv(tmp_path / "train.csv", "filepath,caption", [f"img/{i}.png,cap {i}" for i in range(6)])
    write_csv(tmp_path / "val.csv", "filepath,caption", [f"img/{i}.png,cap {i}" for i in range(6)])
    return tmp_path


def spec(tmp: Path, evaluation=None, export=None, val=True):
    doc = {
        "model": {"name": "ViT-B-32"},
        "dataset": {"trainCsv": str(tmp / "train.csv"), **({"valCsv": str(tmp / "val.csv")} if val else {})},
        "training": {"batchSize": 2},
        "output": {"path": str(tmp / "out")},
    }
    if evaluation is not None:
        doc["evaluation"] = evaluation
    if export is not None:
        doc["export"] = export
    return parse_spec(doc)


# ---------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("export", "evaluation", "expected"),
    [
        ({"wiseFtAlphas": [0.5, 1.5]}, None, "spec.export.wiseFtAlphas.1: Input should be less than or equal to 1"),
        ({"wiseFtAlphas": [-0.1]}, None, "spec.export.wiseFtAlphas.0: Input should be greater than or equal to 0"),
        ({"select": "alpha"}, None, "select: alpha needs spec.export.alpha"),
        ({"select": "alpha", "alpha": 2}, None, "spec.export.alpha: Input should be less than or equal to 1"),
        (
            {"select": "bestWithinRetentionDrop", "maxRetentionDrop": 0.1},
            None,
            "bestWithinRetentionDrop needs spec.evaluation.retentionCsv",
        ),
        ({"select": "bestWithinRetentionDrop"}, None, "needs spec.export.maxRetentionDrop"),
        (
            {"select": "newest"},
            None,
            "spec.export.select: Input should be 'finetuned', 'alpha' or 'bestWithinRetentionDrop'",
        ),
        (None, {"zeroShot": {"csv": "z.csv", "templates": ["a photo"]}}, "templates must contain '{}'"),
        (None, {"metric": "accuracy"}, "spec.evaluation.metric: Input should be"),
        (None, {"patience": 0}, "spec.evaluation.patience: Input should be greater than or equal to 1"),
    ],
)
def test_bad_configs_fail_with_one_line_naming_the_key(data, export, evaluation, expected):
    with pytest.raises(ConfigError) as err:
        spec(data, evaluation=evaluation, export=export)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_forgetting_options_need_a_val_csv(data):
    with pytest.raises(ConfigError, match=r"spec\.export\.wiseFtAlphas needs spec\.dataset\.valCsv"):
        spec(data, export={"wiseFtAlphas": [0.5]}, val=False)
    with pytest.raises(ConfigError, match=r"spec\.evaluation\.retentionCsv needs spec\.dataset\.valCsv"):
        spec(data, evaluation={"retentionCsv": "r.csv"}, val=False)


def test_the_sweep_always_holds_0_and_1_and_the_fixed_alpha():
    assert ExportSpec(wiseFtAlphas=[0.5, 0.25, 0.5]).alphas() == [0.0, 0.25, 0.5, 1.0]
    assert ExportSpec(select="alpha", alpha=0.3).alphas() == [0.0, 0.3, 1.0]
    assert not ExportSpec().sweeps()
    assert ExportSpec(wiseFtAlphas=[0.5]).sweeps()


# ------------------------------------------------------------------------------------- preflight


def test_a_good_retention_and_zeroshot_csv_pass_and_are_reported(data):
    write_csv(data / "ret.csv", "filepath;caption", [f"img/{i}.png;general {i}" for i in range(4)])
    write_csv(data / "zs.csv", "filepath,label", [f"img/{i}.png,{'cat' if i % 2 else 'dog'}" for i in range(6)])
    report = run_preflight(
        spec(data, evaluation={"retentionCsv": str(data / "ret.csv"), "zeroShot": {"csv": str(data / "zs.csv")}}),
        world=1,
    )
    assert len(report.eval_sets.retention) == 4
    assert report.eval_sets.retention.separator == ";"
    assert sorted(set(report.eval_sets.zeroshot.captions)) == ["cat", "dog"]
    assert "retention 4 rows, zero-shot 6 images / 2 classes" in report.summary()


@pytest.mark.parametrize(
    ("which", "header", "rows", "expected"),
    [
        (
            "retention",
            "path,caption",
            ["img/0.png,a"],
            "spec.evaluation.retentionCsv {csv}: column 'filepath' (spec.dataset.imageColumn) not found",
        ),
        (
            "retention",
            "filepath,caption",
            ["img/0.png,a", "img/missing.png,b"],
            "spec.evaluation.retentionCsv {csv}: 1 of 2 images not found",
        ),
        (
            "retention",
            "filepath,caption",
            [],
            "spec.evaluation.retentionCsv {csv}: the header is there but the dataset has no rows",
        ),
        (
            "zeroShot",
            "filepath,class",
            ["img/0.png,a"],
            "spec.evaluation.zeroShot.csv {csv}: column 'label' (spec.evaluation.zeroShot.labelColumn) not found",
        ),
        (
            "zeroShot",
            "filepath,label",
            ["img/0.png,cat", "img/1.png,cat"],
            "1 class in column 'label'; zero-shot classification needs at least 2",
        ),
        (
            "zeroShot",
            "filepath,label",
            ["img/0.png,cat", "img/1.png,"],
            "1 of 2 rows have an empty 'label' (spec.evaluation.zeroShot.labelColumn)",
        ),
    ],
)
def test_a_bad_retention_or_zeroshot_csv_fails_the_preflight_with_one_line(data, which, header, rows, expected):
    csv = write_csv(data / "extra.csv", header, rows)
    evaluation = {"retentionCsv": str(csv)} if which == "retention" else {"zeroShot": {"csv": str(csv)}}
    with pytest.raises(PreflightError) as err:
        run_preflight(spec(data, evaluation=evaluation), world=1)
    assert expected.format(csv=csv) in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------- WiSE-FT


def test_interpolation_is_exact_at_the_ends_and_the_formula_in_between():
    g = torch.Generator().manual_seed(0)
    start = {"w": torch.randn(5, 3, generator=g), "b": torch.randn(3, generator=g), "n": torch.tensor([7])}
    ft = {"w": torch.randn(5, 3, generator=g), "b": torch.randn(3, generator=g), "n": torch.tensor([9])}
    assert all(torch.equal(wiseft.interpolate(start, ft, 0.0)[k], start[k]) for k in ("w", "b"))
    assert all(torch.equal(wiseft.interpolate(start, ft, 1.0)[k], ft[k]) for k in ("w", "b"))
    mid = wiseft.interpolate(start, ft, 0.3)
    assert torch.equal(mid["w"], 0.7 * start["w"] + 0.3 * ft["w"])
    assert not torch.equal(mid["w"], start["w"])
    assert not torch.equal(mid["w"], ft["w"])
    assert torch.equal(mid["n"], ft["n"])  # integer buffers are not mixed
    with pytest.raises(ValueError, match="different parameters"):
        wiseft.interpolate(start, {"w": ft["w"]}, 0.5)


def entry(alpha, val, ret):
    return {
        "alpha": alpha,
        "val": {"image_to_text_R@1": val, "text_to_image_R@1": val},
        "retention": {"image_to_text_R@1": ret},
    }


TABLE = [
    entry(0.0, 0.10, 0.50),
    entry(0.25, 0.20, 0.48),
    entry(0.5, 0.30, 0.44),
    entry(0.75, 0.40, 0.30),
    entry(1.0, 0.45, 0.20),
]


@pytest.mark.parametrize(
    ("policy", "alpha"),
    [
        (ExportSpec(wiseFtAlphas=[0.25, 0.5, 0.75]), 1.0),
        (ExportSpec(select="alpha", alpha=0.25), 0.25),
        (ExportSpec(select="bestWithinRetentionDrop", maxRetentionDrop=0.06), 0.5),
        (ExportSpec(select="bestWithinRetentionDrop", maxRetentionDrop=0.2), 0.75),
        (ExportSpec(select="bestWithinRetentionDrop", maxRetentionDrop=0.3), 1.0),
        (ExportSpec(select="bestWithinRetentionDrop", maxRetentionDrop=0.0), 0.0),  # only the start keeps everything
    ],
)
def test_selection_policies(policy, alpha):
    chosen, reason = wiseft.select(TABLE, policy)
    assert chosen == alpha
    assert policy.select in reason


def test_table_lines_show_each_alpha():
    lines = wiseft.table_lines(TABLE)
    assert len(lines) == 5
    assert lines[2].startswith("alpha 0.50  val i2t R@1 0.300")
    assert "retention R@1 0.440" in lines[2]


# ----------------------------------------------------------------------------- controller status


def test_progress_maps_gain_and_forgetting_onto_status():
    status = progress_status(
        {
            "eval": {"image_to_text_R@1": 0.4},
            "baseline": {"image_to_text_R@1": 0.1},
            "retention": {"image_to_text_R@1": 0.25},
            "retentionBaseline": {"image_to_text_R@1": 0.5},
            "zeroShot": {"top1": 0.3},
            "zeroShotBaseline": {"top1": 0.6},
        }
    )
    assert status["recallAt1Gain"] == 0.3
    assert status["recallAt1Baseline"] == 0.1
    assert status["retentionDrop"] == 0.25
    assert status["retentionRecallAt1"] == 0.25
    assert status["zeroShotTop1"] == 0.3
    assert status["zeroShotTop1Baseline"] == 0.6
    assert "recallAt1Gain" not in progress_status({"eval": {"image_to_text_R@1": 0.4}})  # no baseline: no gain


def test_succeeded_message_carries_the_trainer_summary():
    assert (
        completed_message("j-node-0", {"exitCode": 0, "message": "exported alpha 0.5: ...\n"})
        == "j-node-0 completed: exported alpha 0.5: ..."
    )
    assert completed_message("j-node-0", None) == "j-node-0 completed"


def test_reconcile_puts_the_trainer_summary_in_the_succeeded_message():
    from test_reconcile import _running_job, pod, run  # the reconcile tests' job/pod builders

    summary = "exported alpha 0.5: select bestWithinRetentionDrop 0.1: ...; alpha 0.00 val i2t R@1 0.027 ..."
    _, j = run(_running_job(), [pod(0, "Succeeded", exit_code=0, reason="Completed", message=summary), pod(1)])
    assert j["status"]["phase"] == "Succeeded"
    assert j["status"]["message"] == f"j-node-0 completed: {summary}"
