"""The bench harness (hack/peer, hack/bench_gpu): the dataset is the same whatever the process count; the peer's log
parses; runs alternate over rounds and their windows average.

``make bench`` and ``make bench-gpu`` compare trainers on files this generator writes, in
parallel processes on the GPU machine and serially in a small test: both must be byte-identical.
The whole harness runs end to end in ``tests/integration/test_bench_gpu.py``.
"""

from __future__ import annotations

from pathlib import Path

from hack.peer import dataset, oc_log


def read(folder: Path) -> list[tuple[str, bytes, str]]:
    rows = (folder / "train.csv").read_text().splitlines()[1:]
    out = []
    for row in rows:
        path, caption = row.split(",", 1)
        out.append((Path(path).name, Path(path).read_bytes(), caption))
    return out


def test_dataset_is_identical_serial_and_parallel(tmp_path):
    one = dataset.make(tmp_path / "one", n=80, size=32, procs=1)
    two = dataset.make(tmp_path / "two", n=80, size=32, procs=2)
    a, b = read(tmp_path / "one"), read(tmp_path / "two")
    assert len(a) == 80
    assert a == b
    assert one["val"] is None
    assert two["train"].exists()
    assert len({img for _, img, _ in a}) == 80  # varied content: no two images alike
    assert len({cap for _, _, cap in a}) > 40


def test_open_clip_train_step_lines_parse(tmp_path):
    log = tmp_path / "out.log"
    log.write_text(
        "2026-11-27,17:41:40 | INFO | Start epoch 0\n"
        "2026-11-27,17:41:40 | INFO | Train Epoch: 0 [15104/33280 (45%)] Data (t): 0.003 Batch (t): 0.157, "
        "1628.11/s, 1628.11/s/gpu LR: 0.000327 Logit Scale: 14.241 Contrastive_loss: 5.3 (5.4) Loss: 5.2642 (5.4586)\n"
        "2026-11-27,17:41:41 | INFO | Train Epoch: 1 [  256/33280 (1%)] Data (t): 1.250 Batch (t): 1.500, "
        "170.6/s, 170.6/s/gpu LR: 0.000321 Logit Scale: 14.241 Contrastive_loss: 5.2 (5.2) Loss: 5.2479 (5.2479)\n"
    )
    steps = oc_log.steps(log)
    assert steps == [
        {"epoch": 0, "seen": 15104, "data_s": 0.003, "step_s": 0.157, "loss": 5.2642},
        {"epoch": 1, "seen": 256, "data_s": 1.25, "step_s": 1.5, "loss": 5.2479},
    ]


def test_bench_gpu_alternates_the_order_every_other_round():
    from hack.bench_gpu import run_order

    assert run_order(["open_clip_train", "kubeclip"], 3) == [
        ("open_clip_train", 0),
        ("kubeclip", 0),
        ("kubeclip", 1),
        ("open_clip_train", 1),
        ("open_clip_train", 2),
        ("kubeclip", 2),
    ]
    assert run_order(["a", "b", "c"], 1) == [("a", 0), ("b", 0), ("c", 0)]


def test_bench_gpu_aggregates_a_configurations_windows_into_their_means():
    from hack.bench_gpu import aggregate

    runs = [
        {"samples_per_s": 100.0, "data_wait_share": 0.1, "wall_s": 30.0, "round": 1, "peak_gpu_mem_mib": None},
        {"samples_per_s": 120.0, "data_wait_share": 0.3, "wall_s": 32.0, "round": 2, "peak_gpu_mem_mib": None},
    ]
    agg = aggregate(runs)
    assert agg["windows"] == [100.0, 120.0]
    assert agg["samples_per_s"] == 110.0
    assert agg["data_wait_share"] == 0.2
    assert agg["wall_s"] == 31.0
    assert agg["peak_gpu_mem_mib"] is None  # no window measured it (CPU): not a made-up 0
    assert agg["round"] == 2  # the other fields are the last window's
