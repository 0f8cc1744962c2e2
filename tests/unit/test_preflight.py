"""Every dataset preflight error: one line, naming what is wrong and what to change.

Real files in a temporary directory (CSV + PNG images); pandas and PIL only, no torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from kubeclip.api import EXIT_PREFLIGHT, parse_spec
from trainer.preflight import run_preflight
from trainer.table import PreflightError, detect_separator

REPO = Path(__file__).resolve().parents[2]


def make_images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"img{i}.png"
        Image.new("RGB", (8, 8), (i * 10 % 255, 0, 0)).save(folder / name)
        names.append(name)
    return names


def spec_for(tmp: Path, csv: str = "train.csv", batch: int = 2, **dataset) -> object:
    return parse_spec(
        {
            "model": {"name": "ViT-B-32"},
            "dataset": {"trainCsv": str(tmp / csv), **dataset},
            "training": {"batchSize": batch},
            "output": {"path": str(tmp / "out")},
        }
    )


@pytest.fixture
def data(tmp_path):
    names = make_images(tmp_path / "img", 6)
    return tmp_path, names


def write_csv(path: Path, header: list[str], rows: list[list[str]], sep: str = ",", encoding="utf-8") -> None:
    lines = [sep.join(header)] + [sep.join(r) for r in rows]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))


def fail(spec, world=1) -> str:
    with pytest.raises(PreflightError) as err:
        run_preflight(spec, world=world)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("sep", [",", "\t", ";", "|"])
def test_separator_is_detected_and_relative_paths_resolve_against_the_csv(data, sep):
    tmp, names = data
    write_csv(tmp / "train.csv", ["filepath", "caption"], [[f"img/{n}", f"caption {n}"] for n in names], sep)
    report = run_preflight(spec_for(tmp), world=1)
    assert report.train.separator == sep
    assert len(report.train) == 6
    assert report.train.paths[0] == os.path.join(tmp, "img", names[0])


def test_root_is_the_base_for_relative_paths(data):
    tmp, names = data
    (tmp / "csvs").mkdir()
    write_csv(tmp / "csvs" / "train.csv", ["filepath", "caption"], [[n, "c"] for n in names])
    report = run_preflight(spec_for(tmp, "csvs/train.csv", root=str(tmp / "img")), world=1)
    assert report.train.paths[-1] == os.path.join(tmp, "img", names[-1])


def test_wrong_separator_names_columns_found_and_the_likely_separator(data):
    tmp, names = data
    write_csv(tmp / "train.csv", ["filepath", "caption"], [[f"img/{n}", "c"] for n in names], "\t")
    msg = fail(spec_for(tmp, separator=","))
    assert "columns found: ['filepath\\tcaption']" in msg
    assert "separator '\\t' (tab)" in msg
    assert "spec.dataset.separator" in msg


def test_missing_caption_column_names_the_columns_found(data):
    tmp, names = data
    write_csv(tmp / "train.csv", ["filepath", "title"], [[f"img/{n}", "c"] for n in names])
    msg = fail(spec_for(tmp))
    assert "'caption' (spec.dataset.captionColumn) not found" in msg
    assert "columns found: ['filepath', 'title']" in msg
    assert "likely separator ','" in msg


def test_custom_column_names_work(data):
    tmp, names = data
    write_csv(tmp / "train.csv", ["image", "text"], [[f"img/{n}", "c"] for n in names], ";")
    report = run_preflight(spec_for(tmp, imageColumn="image", captionColumn="text"), world=1)
    assert len(report.train) == 6


def test_missing_images_are_counted_with_the_first_paths(data):
    tmp, names = data
    rows = [[f"img/{n}", "c"] for n in names] + [[f"img/gone{i}.png", "c"] for i in range(5)]
    write_csv(tmp / "train.csv", ["filepath", "caption"], rows)
    msg = fail(spec_for(tmp))
    assert "5 of 11 images not found" in msg
    assert "gone0.png" in msg
    assert "gone2.png" in msg
    assert "gone3.png" not in msg


def test_unreadable_images_are_reported(data):
    tmp, names = data
    (tmp / "img" / "broken.png").write_bytes(b"this is not a png")
    write_csv(tmp / "train.csv", ["filepath", "caption"], [[f"img/{n}", "c"] for n in [*names, "broken.png"]])
    msg = fail(spec_for(tmp))
    assert "1 of 7 checked images cannot be read" in msg
    assert "broken.png" in msg


def test_empty_dataset(data):
    tmp, _ = data
    write_csv(tmp / "train.csv", ["filepath", "caption"], [])
    assert "no rows" in fail(spec_for(tmp))


def test_empty_file(data):
    tmp, _ = data
    (tmp / "train.csv").write_bytes(b"")
    assert "empty file" in fail(spec_for(tmp))


def test_missing_csv(tmp_path):
    assert "file not found" in fail(spec_for(tmp_path))


def test_bad_encoding_in_the_body(data):
    tmp, names = data
    rows = [[f"img/{n}", "café"] for n in names]
    write_csv(tmp / "train.csv", ["filepath", "caption"], rows, encoding="latin-1")
    msg = fail(spec_for(tmp))
    assert "not UTF-8" in msg
    assert "re-save" in msg


def test_bad_encoding_in_the_header(data):
    tmp, names = data
    write_csv(tmp / "train.csv", ["filepath", "légende"], [[f"img/{n}", "c"] for n in names], encoding="latin-1")
    assert "not UTF-8" in fail(spec_for(tmp))


def test_empty_captions_are_reported_with_line_numbers(data):
    tmp, names = data
    rows = [[f"img/{n}", "c" if i != 2 else ""] for i, n in enumerate(names)]
    write_csv(tmp / "train.csv", ["filepath", "caption"], rows)
    msg = fail(spec_for(tmp))
    assert "1 of 6 rows have an empty 'caption'" in msg
    assert "line(s) 4" in msg


def test_batch_larger_than_the_data_counts_all_processes(data):
    tmp, names = data
    write_csv(tmp / "train.csv", ["filepath", "caption"], [[f"img/{n}", "c"] for n in names])
    run_preflight(spec_for(tmp, batch=3), world=2)  # 6 rows = one global batch of 3 x 2: fine
    msg = fail(spec_for(tmp, batch=4), world=2)
    assert "6 rows, fewer than one optimizer step needs" in msg
    assert "batchSize 4 x 2 processes" in msg


def test_val_csv_is_checked_too(data):
    tmp, names = data
    write_csv(tmp / "train.csv", ["filepath", "caption"], [[f"img/{n}", "c"] for n in names])
    write_csv(tmp / "val.csv", ["filepath", "text"], [[f"img/{n}", "c"] for n in names])
    msg = fail(spec_for(tmp, valCsv=str(tmp / "val.csv")))
    assert msg.startswith("spec.dataset.valCsv")


def test_local_dir_model_without_config(data):
    tmp, names = data
    write_csv(tmp / "train.csv", ["filepath", "caption"], [[f"img/{n}", "c"] for n in names])
    spec = spec_for(tmp).model_copy(
        update={
            "model": parse_spec(
                {"model": {"name": f"local-dir:{tmp}"}, "dataset": {"trainCsv": "x"}, "output": {"path": "x"}}
            ).model
        }
    )
    assert "no open_clip_config.json" in fail(spec)


def test_detect_separator_falls_back_to_the_most_frequent():
    assert detect_separator("a;b;c", ("x", "y")) == ";"
    assert detect_separator("single", ("x", "y")) is None


def bad_job(tmp: Path, names: list[str]) -> Path:
    write_csv(tmp / "train.csv", ["filepath", "title"], [[f"img/{n}", "c"] for n in names])
    manifest = tmp / "job.yaml"
    manifest.write_text(
        "apiVersion: kubeclip.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: t}\n"
        f"spec: {{model: {{name: ViT-B-32}}, dataset: {{trainCsv: {tmp / 'train.csv'}}}, output: {{path: {tmp / 'out'}}}}}\n"
    )
    return manifest


def test_pod_entrypoint_fails_with_one_line_without_importing_torch(data):
    """``python -m trainer.node`` on a bad CSV: exit 3, one stderr line, torch never imported."""
    manifest = bad_job(*data)
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['trainer.node', sys.argv[1]]\n"
        "try:\n    runpy.run_module('trainer.node', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)\n"
        "    raise\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(manifest)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == EXIT_PREFLIGHT, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("preflight: spec.dataset.trainCsv")
    assert "columns found: ['filepath', 'title']" in lines[0]
    assert lines[1:] == ["no torch"]


def test_trainer_fails_with_one_line_before_building_a_model(data):
    """``python -m trainer`` (preflight in a forked child while torch imports): exit 3, one line."""
    manifest = bad_job(*data)
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", str(manifest)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == EXIT_PREFLIGHT, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("preflight: spec.dataset.trainCsv"), proc.stderr


def test_free_space_is_checked_against_the_real_filesystem(tmp_path):
    """The output filesystem's real free space (statvfs) against a need just above / below it."""
    from trainer.preflight import check_free_space

    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    check_free_space(tmp_path / "out", tmp_path, need=max(1, free // 2))
    with pytest.raises(
        PreflightError, match=r"spec.output.path .*/out: only .* free on its filesystem, checkpoints need at least"
    ):
        check_free_space(tmp_path / "out", tmp_path, need=free + (1 << 40))


def test_free_space_need_grows_with_the_checkpoints_already_written(tmp_path):
    """Twice the newest checkpoint: a sparse 'checkpoint' larger than half the free space fails."""
    from trainer.preflight import check_free_space

    d = tmp_path / "out" / "checkpoints"
    d.mkdir(parents=True)
    st = os.statvfs(tmp_path)
    with open(d / "step-00000010.pt", "wb") as f:
        f.truncate(st.f_bavail * st.f_frsize // 2 + (1 << 30))  # sparse: takes no real space
    with pytest.raises(PreflightError, match="checkpoints need at least"):
        check_free_space(tmp_path / "out", tmp_path)
