"""GPU data path: loader workers read JPEG bytes, the training process decodes each batch on the GPU.

Who uses it: ``trainer.train`` when the run is on CUDA (the PIL path of ``trainer.data`` stays
for CPU runs and for any transform this module does not reproduce); ``hack/bench_gpu.py``
measures it; the tests run the same code on CPU tensors.

Why: on one H200, ViT-B-32 at batch 256 trains at 2,000-3,300 samples/s; 12 loader workers
decoding 256-px JPEGs with PIL start to fall behind at ~2,700/s, and their float32 batches cost
twice the CPU time and three times the memory of the whole run (BENCHMARKS.md). Here a worker
only reads the file, parses its header and draws the random crop box; the training process
decodes the whole batch with nvJPEG (``torchvision.io.decode_jpeg(..., device="cuda")``), crops,
resizes and normalises it on the GPU (~20,000 images/s there), on a side CUDA stream in a
background thread, up to two batches ahead of the step that needs it.

Same pixels as open_clip's preprocess, within rounding: :func:`plan_from_transform` reads the
crop scale/ratio, output size, interpolation and mean/std out of open_clip's own ``Compose``
(``RandomResizedCrop`` for training; ``Resize`` + ``CenterCrop`` for evaluation; bicubic or
bilinear), and returns None for anything else (colour jitter, grayscale, timm transforms,
"longest"/"squash" resize): the caller then keeps the PIL path. The crop box of a sample is drawn by the same
``RandomResizedCrop.get_params`` call under the same per-sample seed as ``trainer.data``'s, so
both paths crop the same region; the resize is PIL's antialiased resampling written as two
batched matrix products per batch, rounded to 8 bits like PIL's.

Fallbacks, each per image or per batch, never silent: files that are not baseline RGB/gray
JPEGs are decoded by PIL in the worker and travel as pixels; a batch nvJPEG refuses is decoded
on the CPU (logged once).
"""

from __future__ import annotations

import functools
import io
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainer.data import ShardedBatchSampler, batch_loader, image_error, sample_seed, seeded_rng
from trainer.table import Rows
from trainer.truncate import TokenCut

log = logging.getLogger("trainer")

JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class Preprocess:
    """What open_clip's transform does, as numbers: enough to redo it on a batch tensor."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train: bool
    interpolation: str = "bicubic"  # or "bilinear"; always antialiased, as PIL resizes
    scale: tuple[float, float] = (1.0, 1.0)  # RandomResizedCrop's area range (train)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # and aspect-ratio range


def plan_from_transform(transform: Any) -> Preprocess | None:
    """Read open_clip's ``Compose``; None when it holds a step this module does not reproduce."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    names = [type(s).__name__ for s in steps]
    modes = (T.InterpolationMode.BICUBIC, T.InterpolationMode.BILINEAR)
    norm = steps[-1] if steps else None
    if not isinstance(norm, T.Normalize) or names[-2:-1] not in (["MaybeToTensor"], ["ToTensor"]):
        return None
    if len(norm.mean) != 3 or len(norm.std) != 3:
        return None
    mean = (float(norm.mean[0]), float(norm.mean[1]), float(norm.mean[2]))
    std = (float(norm.std[0]), float(norm.std[1]), float(norm.std[2]))
    head = [s for s in steps[:-2] if type(s).__name__ not in ("MaybeConvertMode", "_convert_to_rgb")]
    if len(head) == 1 and isinstance(head[0], T.RandomResizedCrop):
        rrc = head[0]
        size = list(rrc.size)
        if len(size) != 2 or size[0] != size[1] or rrc.interpolation not in modes or rrc.antialias is False:
            return None
        return Preprocess(
            size[0],
            mean,
            std,
            train=True,
            interpolation=rrc.interpolation.value,
            scale=tuple(rrc.scale),
            ratio=tuple(rrc.ratio),
        )
    if len(head) == 2 and isinstance(head[0], T.Resize) and isinstance(head[1], T.CenterCrop):
        resize, crop = head
        if not isinstance(resize.size, int) and len(resize.size) != 1:
            return None
        side = resize.size if isinstance(resize.size, int) else resize.size[0]
        if (
            resize.interpolation not in modes
            or resize.antialias is False
            or resize.max_size is not None
            or list(crop.size) != [side, side]
        ):
            return None
        return Preprocess(side, mean, std, train=False, interpolation=resize.interpolation.value)
    return None


def crop_box(plan: Preprocess, image, seed: int) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the region to resize, for a (lazily opened) PIL image.

    Training: the draw ``RandomResizedCrop`` makes under ``torch.manual_seed(seed)``, exactly as
    ``trainer.data.CaptionDataset`` seeds it. Evaluation: the whole image (resize, then centre crop).
    """
    if not plan.train:
        w, h = image.size
        return 0, 0, h, w
    from torchvision.transforms import RandomResizedCrop

    with seeded_rng(seed):
        top, left, height, width = RandomResizedCrop.get_params(image, list(plan.scale), list(plan.ratio))
    return top, left, height, width


class RawCaptionDataset(Dataset):
    """``dataset[(epoch, i)]`` → ``(is_jpeg, uint8 tensor, crop box, token ids)``.

    ``is_jpeg``: the tensor holds the file's bytes for nvJPEG; otherwise it holds decoded RGB
    pixels (C, H, W) from PIL (PNG, CMYK or odd JPEGs).
    """

    def __init__(self, table: Rows, plan: Preprocess, tokenizer, seed: int):
        self.paths = table.paths
        self.captions = table.captions
        self.plan = plan
        self.tokenizer = tokenizer
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        from PIL import Image

        path = self.paths[index]
        try:
            with open(path, "rb") as f:
                raw = bytearray(f.read())
            with Image.open(io.BytesIO(raw)) as im:  # header only, unless we fall back to decoding here
                box = crop_box(self.plan, im, sample_seed(self.seed, epoch, index))
                if raw.startswith(JPEG_MAGIC) and im.mode in ("RGB", "L"):
                    data, is_jpeg = torch.frombuffer(raw, dtype=torch.uint8), True
                else:
                    pixels = np.asarray(im.convert("RGB"))
                    data, is_jpeg = torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous(), False
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise (image_error(path, index, err) or err) from None
        tokens = self.tokenizer([str(self.captions[index])])[0]
        return is_jpeg, data, torch.tensor(box, dtype=torch.int64), tokens


def collate_raw(items: list, cut: TokenCut | None = None) -> dict:
    """One batch: all JPEG bytes in one flat uint8 tensor (one pinned copy, one transfer), lengths,
    boxes, tokens (cut by ``cut`` to the batch's exact text length, ``trainer.truncate``); decoded
    pixels of the fallback files as a list."""
    is_jpeg = [it[0] for it in items]
    blobs = [it[1] for it in items if it[0]]
    tokens = torch.stack([it[3] for it in items])
    return {
        "is_jpeg": is_jpeg,
        "jpeg": torch.cat(blobs) if blobs else torch.empty(0, dtype=torch.uint8),
        "jpeg_lengths": [len(b) for b in blobs],
        "pixels": [it[1] for it in items if not it[0]],
        "boxes": torch.stack([it[2] for it in items]),
        "tokens": cut(tokens) if cut is not None else tokens,
    }


def _kernel(name: str, t: torch.Tensor) -> torch.Tensor:
    """PIL's resampling filters: bicubic (a = -0.5) and bilinear (triangle)."""
    a = t.abs()
    if name == "bilinear":
        return (1 - a).clamp_(min=0)
    near = ((1.5 * a - 2.5) * a) * a + 1
    far = ((-0.5 * a + 2.5) * a - 4) * a + 2
    return torch.where(a < 1, near, torch.where(a < 2, far, torch.zeros_like(a)))


def resample_matrix(
    start: torch.Tensor,
    length: torch.Tensor,
    out_total: torch.Tensor,
    offset: torch.Tensor,
    out: int,
    size: int,
    kind: str,
) -> torch.Tensor:
    """Per image, the ``(out, size)`` matrix taking one axis of an image to ``out`` resized pixels.

    Input pixels ``[start, start + length)`` (the crop) are resized to ``out_total`` pixels, of which
    rows ``offset .. offset + out`` are kept (a centre crop after the resize). Antialiased like PIL:
    when shrinking, the filter is widened by the scale factor; weights of each output pixel are
    normalised over the input pixels inside the crop. All arguments but ``out``, ``size`` and
    ``kind`` are (N,) tensors; the result is (N, out, size).
    """
    scale = length / out_total
    widen = scale.clamp(min=1.0)
    centre = (torch.arange(out, device=start.device, dtype=torch.float64)[None] + offset[:, None] + 0.5) * scale[
        :, None
    ]
    x = torch.arange(size, device=start.device, dtype=torch.float64)[None] - start[:, None]  # crop coordinates
    w = _kernel(kind, (x[:, None, :] + 0.5 - centre[..., None]) / widen[:, None, None])
    w = w * ((x >= 0) & (x < length[:, None]))[:, None, :]
    return (w / w.sum(-1, keepdim=True)).float()


class BatchDecoder:
    """Raw batch → ``(images float32 (N, 3, S, S) normalised, tokens)`` on ``device``.

    The resize of the whole batch is two batched matrix products (rows, then columns) with
    per-image resampling matrices (:func:`resample_matrix`) instead of one resize call per image:
    a few dozen GPU kernels per batch, not thousands, so the decode thread leaves the Python
    interpreter to the training thread.
    """

    #: images resized per matrix product: bounds the padded float copy of the batch
    CHUNK = 64

    def __init__(self, plan: Preprocess, device: torch.device):
        self.plan = plan
        self.device = torch.device(device)
        self.mean = torch.tensor(plan.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(plan.std, device=self.device).view(1, 3, 1, 1)
        self._warned = False

    def decode(self, batch: dict) -> list:
        """uint8 (3, H, W) tensors on ``self.device``, in batch order."""
        from torchvision.io import ImageReadMode, decode_jpeg

        is_jpeg = batch["is_jpeg"]
        out: list = [None] * len(is_jpeg)
        if batch["jpeg_lengths"]:
            blobs = list(torch.split(batch["jpeg"], batch["jpeg_lengths"]))
            try:
                images = decode_jpeg(blobs, mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError as e:  # nvJPEG refuses some encodings: this batch goes via the CPU
                if self.device.type == "cpu":
                    raise
                if not self._warned:
                    log.warning("GPU JPEG decode failed (%s); decoding such batches on the CPU", str(e).splitlines()[0])
                    self._warned = True
                images = [im.to(self.device) for im in decode_jpeg(blobs, mode=ImageReadMode.RGB)]
            for i, im in zip([i for i, j in enumerate(is_jpeg) if j], images, strict=True):
                out[i] = im
        for i, px in zip([i for i, j in enumerate(is_jpeg) if not j], batch["pixels"], strict=True):
            out[i] = px.to(self.device, non_blocking=True)
        return out

    def _regions(self, images: list, boxes: torch.Tensor):
        """(start, length, resized length, offset) per axis, as float64 (N,) tensors on the device."""
        s = self.plan.size
        if self.plan.train:  # RandomResizedCrop: resize the box to s x s
            top, left, h, w = boxes.double().unbind(1)
            full = torch.full_like(h, float(s))
            zero = torch.zeros_like(h)
            return (top, h, full, zero), (left, w, full, zero)
        rows, cols = [], []
        for im in images:  # Resize(s) on the shorter side, then CenterCrop(s), as torchvision sizes them
            h, w = im.shape[-2:]
            nh, nw = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
            rows.append((0, h, nh, round((nh - s) / 2.0)))
            cols.append((0, w, nw, round((nw - s) / 2.0)))
        as_t = lambda v: torch.tensor(v, dtype=torch.float64).to(self.device).unbind(1)  # noqa: E731
        return as_t(rows), as_t(cols)

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        s, kind = self.plan.size, self.plan.interpolation
        images = self.decode(batch)
        (ys, yl, yt, yo), (xs, xl, xt, xo) = self._regions(images, batch["boxes"].to(self.device))
        pixels = torch.empty((len(images), 3, s, s), dtype=torch.float32, device=self.device)
        for c0 in range(0, len(images), self.CHUNK):
            part = images[c0 : c0 + self.CHUNK]
            hmax, wmax = max(im.shape[-2] for im in part), max(im.shape[-1] for im in part)
            if all(im.shape[-2:] == (hmax, wmax) for im in part):
                stack = torch.stack(part).float()
            else:  # mixed sizes: zero padding, which the matrices never weight
                stack = torch.zeros((len(part), 3, hmax, wmax), dtype=torch.float32, device=self.device)
                for k, im in enumerate(part):
                    stack[k, :, : im.shape[-2], : im.shape[-1]] = im
            sl = slice(c0, c0 + len(part))
            wy = resample_matrix(ys[sl], yl[sl], yt[sl], yo[sl], s, hmax, kind)
            wx = resample_matrix(xs[sl], xl[sl], xt[sl], xo[sl], s, wmax, kind)
            # columns first, then rows, each pass rounded and clamped to 8 bits: PIL's order and its
            # 8-bit intermediate image (bicubic overshoots at edges; PIL clamps between the passes)
            cols = torch.matmul(stack, wx.transpose(1, 2)[:, None]).round_().clamp_(0, 255)
            pixels[sl] = torch.matmul(wy[:, None], cols)
        # uint8 rounding, then ToTensor's /255 and Normalize in one pass over the batch
        x = pixels.round_().clamp_(0, 255).div_(255).sub_(self.mean).div_(self.std)
        return x, batch["tokens"].to(self.device, non_blocking=True)


class Prefetcher:
    """Iterate decoded batches; a thread decodes the next ``depth`` ones on a side CUDA stream.

    The thread takes the loader's raw batches and issues their decode while the training thread
    runs (or waits for) the current step; ``next()`` makes the training stream wait for the
    batch's event, so no batch is read before its decode has finished. Exceptions in the thread
    are raised from ``next()``. On CPU the same thread runs without streams (tests).
    """

    _END = object()

    def __init__(self, batches: Iterator, decoder: Callable, device: torch.device, depth: int = 2):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.batches, self.decoder = batches, decoder
        self.thread = threading.Thread(target=self._run, name="gpu-decode", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            if self.cuda:
                torch.cuda.set_device(self.device)
            for raw in self.batches:
                if self.cuda:
                    with torch.cuda.stream(self.stream):
                        out = self.decoder(raw)
                        event = torch.cuda.Event()
                        event.record(self.stream)
                else:
                    out, event = self.decoder(raw), None
                self.q.put((out, event))
        except BaseException as e:  # handed to the training thread
            self.q.put(e)
            return
        self.q.put(self._END)

    def __iter__(self):
        return self

    def __next__(self):
        item = self.q.get()
        if item is self._END:
            self.q.put(item)  # stay exhausted
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        out, event = item
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for t in out:  # made on the side stream, used (and freed) on this one
                t.record_stream(current)
        return out


class DeviceLoader:
    """Drop-in for the training ``DataLoader``: ``iter()`` gives decoded, device-resident batches."""

    def __init__(self, loader: DataLoader, decoder: BatchDecoder):
        self.loader, self.decoder = loader, decoder

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Prefetcher:
        return Prefetcher(iter(self.loader), self.decoder, self.decoder.device)


def raw_loader(
    dataset: RawCaptionDataset, sampler: ShardedBatchSampler, workers: int, pin: bool, cut: TokenCut | None = None
) -> DataLoader:
    """The GPU path's training loader: file bytes and crop boxes, four batches ahead per worker."""
    return batch_loader(dataset, sampler, workers, pin, functools.partial(collate_raw, cut=cut), prefetch_factor=4)


def gpu_train_loader(
    table: Rows,
    transform,
    tokenizer,
    seed: int,
    sampler: ShardedBatchSampler,
    workers: int,
    device: torch.device,
    cut: TokenCut | None = None,
) -> DeviceLoader | None:
    """The GPU-decoding loader for a CUDA run, or None when ``transform`` is not one it reproduces."""
    plan = plan_from_transform(transform)
    if plan is None:
        log.info("GPU data path off: the image transform has steps it does not reproduce; decoding with PIL")
        return None
    dataset = RawCaptionDataset(table, plan, tokenizer, seed)
    log.info("GPU data path: JPEG decode, crop/resize to %d px and normalisation on %s", plan.size, device)
    return DeviceLoader(raw_loader(dataset, sampler, workers, pin=True, cut=cut), BatchDecoder(plan, device))
