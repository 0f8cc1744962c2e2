"""The parts both data paths share (trainer/data.py): the seeded RNG a sample's augmentation draws
from and the training loader factory. Run through a real DataLoader, with and without worker
processes: the same seed gives the same batches and the same random draws, wherever they are made,
and the training process's own RNG stream is left as it was."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")  # the trainer extra; make test installs it

from torch.utils.data import Dataset, default_collate  # noqa: E402

from trainer.data import ShardedBatchSampler, batch_loader, sample_seed, seeded_rng  # noqa: E402

torch.set_num_threads(1)


class Draws(Dataset):
    """``dataset[(epoch, i)]`` -> ``(i, a random draw seeded by (seed, epoch, i))``: what an augmentation does."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        epoch, index = key
        with seeded_rng(sample_seed(self.seed, epoch, index)):
            return index, torch.rand(3)


def batches(workers: int, seed: int = 7, epoch: int = 0, n: int = 40) -> list[tuple[list[int], torch.Tensor]]:
    sampler = ShardedBatchSampler(n, batch_size=4, world=1, rank=0, seed=seed)
    sampler.set_position(epoch, 0)
    loader = batch_loader(Draws(n, seed), sampler, workers, pin=False, collate_fn=default_collate)
    return [(idx.tolist(), draws) for idx, draws in loader]


def test_the_same_seed_gives_the_same_order_and_draws_twice():
    first, again = batches(workers=0), batches(workers=0)
    assert [b[0] for b in first] == [b[0] for b in again]
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert len(first) == 10
    assert sorted(i for b in first for i in b[0]) == list(range(40))


def test_another_seed_or_epoch_gives_another_order():
    order = [b[0] for b in batches(workers=0)]
    assert [b[0] for b in batches(workers=0, seed=8)] != order
    assert [b[0] for b in batches(workers=0, epoch=1)] != order


def test_workers_draw_what_the_training_process_draws():
    """Seeded in a worker (its own generator) or forked in the main process: the same numbers."""
    here, there = batches(workers=0), batches(workers=2)
    assert [b[0] for b in here] == [b[0] for b in there]
    assert all(torch.equal(a[1], b[1]) for a, b in zip(here, there, strict=True))


def test_the_training_rng_stream_is_left_alone():
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    batches(workers=0)  # draws under seeded_rng in this process, and builds the loader's iterator
    assert torch.equal(torch.rand(5), expected)


def test_seeded_rng_repeats_a_draw_and_restores_the_stream():
    torch.manual_seed(5)
    with seeded_rng(42):
        a = torch.rand(4)
    after = torch.rand(1)
    torch.manual_seed(5)
    with seeded_rng(42):
        b = torch.rand(4)
    assert torch.equal(a, b)
    assert torch.equal(torch.rand(1), after)


def test_prefetch_applies_only_with_workers():
    sampler = ShardedBatchSampler(8, batch_size=2, world=1, rank=0, seed=0)
    assert batch_loader(Draws(8, 0), sampler, 0, False, default_collate, prefetch_factor=4).prefetch_factor is None
    with_workers = batch_loader(Draws(8, 0), sampler, 2, False, default_collate, prefetch_factor=4)
    assert with_workers.prefetch_factor == 4
    assert with_workers.persistent_workers
