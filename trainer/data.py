"""Image-caption data for the training loop: a dataset, a resumable sharded batch sampler, loaders.

Who uses it: ``trainer.train`` (training batches), ``trainer.evaluate`` callers (validation).

Two properties exact resume depends on:

* :class:`ShardedBatchSampler` draws one permutation per epoch from ``(seed, epoch)`` alone and
  gives rank ``r`` every ``world``-th index of it, so "epoch 3, batch 17" names the same samples
  on every run, and a resumed run can start at that batch (``start_batch``).
* :class:`CaptionDataset` seeds the random augmentation of each sample from ``(seed, epoch,
  index)``: the crop a sample gets does not depend on how many loader workers exist or which one
  loads it (open_clip_train's does). The sampler hands ``(epoch, index)`` pairs to the dataset,
  so persistent workers need no side channel to learn the epoch.

Both data paths share this module's seeded RNG (:func:`seeded_rng`) and loader factory
(:func:`batch_loader`): the GPU path (``trainer.gpu_data``) differs only in what a worker returns
and how a batch is collated.

Rows come from ``trainer.rowtable``: bytes and offsets in files every process of the node maps
read-only, so forked workers and the other local ranks share one copy (numpy object arrays did
not stay shared: reading a string writes its reference count, copying the page it is on).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info

from kubeclip.api import DataError
from trainer.table import Rows
from trainer.truncate import TokenCut


def image_error(path: str, index: int, err: BaseException) -> DataError | None:
    """A :class:`DataError` (final: exit 9, one line) when reading image ``path`` failed in a way
    a retry repeats (not an image, truncated, missing, too large); None for I/O errors a retry may
    not see again (EIO, ESTALE on a network volume: those carry an errno, PIL's decode errors do not)."""
    from PIL import Image, UnidentifiedImageError

    deterministic = (UnidentifiedImageError, FileNotFoundError, IsADirectoryError, ValueError, SyntaxError)
    if isinstance(err, (*deterministic, Image.DecompressionBombError)) or (
        isinstance(err, OSError) and err.errno is None
    ):
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        return DataError(
            f"data: image {path} (row {index} of the CSV's data rows) cannot be read: {reason}; "
            "fix or remove that row (the preflight decodes only a sample of the images)"
        )
    return None


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample in one epoch (SeedSequence mixes the three well)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """torch's global generator seeded with ``seed`` inside the block, which is where torchvision's
    random transforms (``RandomResizedCrop``) draw from. In a loader worker that generator belongs to
    the worker alone, so it is simply seeded; in the training process (``workers=0``, evaluation) it
    is forked, so the training RNG stream is the same after the block as before it."""
    if get_worker_info() is not None:
        torch.manual_seed(seed)
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class CaptionDataset(Dataset):
    """``dataset[(epoch, i)]`` → ``(image tensor, token ids)``; augmentation seeded per sample."""

    def __init__(self, table: Rows, transform, tokenizer, seed: int, augment: bool):
        self.paths = table.paths
        self.captions = table.captions
        self.transform = transform
        self.tokenizer = tokenizer
        self.seed = seed
        self.augment = augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        from PIL import Image

        path = self.paths[index]
        try:
            with Image.open(path) as file:
                im = file.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise (image_error(path, index, err) or err) from None
        if self.augment:
            with seeded_rng(sample_seed(self.seed, epoch, index)):
                image = self.transform(im)
        else:
            image = self.transform(im)
        tokens = self.tokenizer([str(self.captions[index])])[0]
        return image, tokens


class ShardedBatchSampler:
    """Per-rank batches of ``(epoch, index)``: a seeded permutation per epoch, strided by rank.

    The tail that does not fill a global batch is dropped, so every rank runs the same number of
    steps (a collective would hang otherwise).
    """

    def __init__(self, n: int, batch_size: int, world: int, rank: int, seed: int):
        self.n, self.batch_size, self.world, self.rank, self.seed = n, batch_size, world, rank, seed
        self.batches_per_epoch = n // (batch_size * world)
        self.epoch = 0
        self.start_batch = 0

    def set_position(self, epoch: int, start_batch: int) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self):
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        mine = perm[: self.batches_per_epoch * self.batch_size * self.world][self.rank :: self.world]
        bs = self.batch_size
        for b in range(self.start_batch, self.batches_per_epoch):
            yield [(self.epoch, int(i)) for i in mine[b * bs : (b + 1) * bs]]


def collate(items: list, cut: TokenCut | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, tokens)`` of a batch; ``cut`` (``trainer.truncate``) trims the tokens to the batch's
    bucketed exact text length, here on the CPU in the loader worker."""
    images, tokens = default_collate(items)
    return images, (cut(tokens) if cut is not None else tokens)


def batch_loader(
    dataset: Dataset,
    sampler: ShardedBatchSampler,
    workers: int,
    pin: bool,
    collate_fn: Callable[[list], Any],
    prefetch_factor: int | None = None,
) -> DataLoader:
    """The training ``DataLoader`` of both data paths: ``sampler``'s batches (the data position and
    order, ``ShardedBatchSampler``), persistent workers, ``prefetch_factor`` batches per worker
    ahead (torch's default when None; only with workers)."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin,
        collate_fn=collate_fn,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        # Its own generator: creating an iterator must not consume the global RNG stream.
        generator=torch.Generator().manual_seed(0),
    )


def train_loader(
    dataset: CaptionDataset, sampler: ShardedBatchSampler, workers: int, pin: bool, cut: TokenCut | None = None
) -> DataLoader:
    """The PIL path's training loader: decoded, augmented image tensors, tokens cut by ``cut``."""
    return batch_loader(dataset, sampler, workers, pin, functools.partial(collate, cut=cut))


def eval_loader(dataset: CaptionDataset, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, drop_last=False)
