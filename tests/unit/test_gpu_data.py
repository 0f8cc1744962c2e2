"""The GPU data path (trainer.gpu_data), run on CPU tensors: same pixels as open_clip's PIL preprocess.

What only a GPU run checks (``make bench-gpu``): nvJPEG itself (``decode_jpeg(device="cuda")``),
the side CUDA stream and its event, pinned-memory copies. Everything else — the plan read from
open_clip's transforms, the seeded crop box, batched ``decode_jpeg``, crop/resize/normalise on
tensors, the PIL fallback for other files, the prefetch thread — runs here on real JPEG/PNG files
through a real DataLoader with worker processes, against the trainer's PIL path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the trainer extra; make test installs it

from PIL import Image  # noqa: E402

from trainer.data import CaptionDataset, ShardedBatchSampler, train_loader  # noqa: E402
from trainer.gpu_data import (  # noqa: E402
    BatchDecoder,
    DeviceLoader,
    Prefetcher,
    RawCaptionDataset,
    collate_raw,
    plan_from_transform,
    raw_loader,
)
from trainer.table import Table  # noqa: E402

torch.set_num_threads(1)

CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 48,
            "patch_size": 16,
            "width": 32,
            "head_width": 16,
            "layers": 1,
            "mlp_ratio": 2.0,
        },
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
}


def photo(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Smooth gradients plus noise and a block: JPEG artefacts and real detail to resize."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    img[y0 : y0 + h // 4, x0 : x0 + w // 4] = rng.integers(0, 255, 3)
    return Image.fromarray(img)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-data")
    (root / "model").mkdir()
    (root / "model" / "open_clip_config.json").write_text(json.dumps(CONFIG))
    name = f"local-dir:{root / 'model'}"
    import open_clip

    _, tf_train, tf_val = open_clip.create_model_and_transforms(name, aug_cfg={"scale": (0.9, 1.0)})
    tokenizer = open_clip.get_tokenizer(name)
    rng = np.random.default_rng(0)
    paths, captions = [], []
    for i in range(12):
        w, h = [(64, 64), (80, 56), (50, 90)][i % 3]  # varied sizes and aspect ratios
        p = root / f"{i:03d}.{'png' if i == 5 else 'jpg'}"
        im = photo(rng, w, h)
        if i == 7:
            im = im.convert("L")  # a grayscale JPEG: decoded to RGB on the fast path
        if i == 9:
            im = im.convert("CMYK")  # a CMYK JPEG: the PIL fallback
        im.save(p, quality=90) if p.suffix == ".jpg" else im.save(p)
        paths.append(str(p))
        captions.append(f"picture number {i}")
    table = Table(
        csv="mem", separator=",", paths=np.array(paths, dtype=object), captions=np.array(captions, dtype=object)
    )
    return {
        "table": table,
        "tf_train": tf_train,
        "tf_val": tf_val,
        "tokenizer": tokenizer,
        "open_clip": open_clip,
        "name": name,
    }


def test_plan_reads_open_clips_transforms(setup):
    train = plan_from_transform(setup["tf_train"])
    val = plan_from_transform(setup["tf_val"])
    assert train.train
    assert train.size == 48
    assert train.scale == (0.9, 1.0)
    assert train.interpolation == "bicubic"
    assert not val.train
    assert val.size == 48
    assert train.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    # colour jitter is a step the GPU path does not reproduce: the caller keeps the PIL path
    _, jitter, _ = setup["open_clip"].create_model_and_transforms(
        setup["name"], aug_cfg={"scale": (0.9, 1.0), "color_jitter_prob": 0.5, "color_jitter": (0.4, 0.4, 0.4, 0.1)}
    )
    assert plan_from_transform(jitter) is None


def test_decode_jpeg_gives_pils_pixels(setup):
    from torchvision.io import ImageReadMode, decode_jpeg

    for p in setup["table"].paths[:4]:
        data = torch.frombuffer(bytearray(Path(p).read_bytes()), dtype=torch.uint8)
        ours = decode_jpeg([data], mode=ImageReadMode.RGB)[0]
        ref = torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)
        assert ours.shape == ref.shape
        assert (ours.int() - ref.int()).abs().max() <= 2


@pytest.mark.parametrize("split", ["train", "val"])
def test_batch_matches_the_pil_path(setup, split):
    tf = setup["tf_" + split]
    plan = plan_from_transform(tf)
    raw = RawCaptionDataset(setup["table"], plan, setup["tokenizer"], seed=3)
    ref = CaptionDataset(setup["table"], tf, setup["tokenizer"], seed=3, augment=split == "train")
    keys = [(2, i) for i in range(12)]
    items = [raw[k] for k in keys]
    assert [it[0] for it in items] == [i not in (5, 9) for i in range(12)]  # PNG and CMYK fall back to PIL pixels
    images, tokens = BatchDecoder(plan, torch.device("cpu"))(collate_raw(items))
    want = torch.stack([ref[k][0] for k in keys])
    assert images.shape == want.shape == (12, 3, 48, 48)
    assert images.dtype == torch.float32
    diff = (images - want).abs()
    # normalised units: 1/255/std ~ 0.015 per grey level; rounding differences of a few levels only
    assert diff.mean() < 0.002, (diff.mean(), diff.max())
    assert diff.max() < 0.05, (diff.mean(), diff.max())
    assert torch.equal(tokens, torch.stack([ref[k][1] for k in keys]))
    if split == "train":  # the crop is drawn per (seed, epoch, index): another epoch crops elsewhere
        other = torch.stack([ref[(3, i)][0] for i in range(12)])
        assert (images - other).abs().mean() > 5 * diff.mean()


def test_loader_with_workers_and_prefetch_gives_the_pil_loaders_batches(setup):
    plan = plan_from_transform(setup["tf_train"])
    table = setup["table"]
    ours = DeviceLoader(
        raw_loader(
            RawCaptionDataset(table, plan, setup["tokenizer"], 0),
            ShardedBatchSampler(len(table), 4, 1, 0, 0),
            workers=2,
            pin=False,
        ),
        BatchDecoder(plan, torch.device("cpu")),
    )
    ref = train_loader(
        CaptionDataset(table, setup["tf_train"], setup["tokenizer"], 0, augment=True),
        ShardedBatchSampler(len(table), 4, 1, 0, 0),
        workers=0,
        pin=False,
    )
    got, want = list(iter(ours)), list(iter(ref))
    assert len(got) == len(want) == 3
    for (gi, gt), (wi, wt) in zip(got, want, strict=True):
        assert torch.equal(gt, wt)
        assert (gi - wi).abs().mean() < 0.01


def test_prefetcher_raises_the_decoders_error_and_stays_exhausted():
    def decode(batch):
        if batch == 2:
            raise ValueError("bad batch 2")
        return (torch.tensor([batch]),)

    it = Prefetcher(iter([0, 1, 2]), decode, torch.device("cpu"))
    assert [next(it)[0].item(), next(it)[0].item()] == [0, 1]
    with pytest.raises(ValueError, match="bad batch 2"):
        next(it)
    done = Prefetcher(iter([0]), decode, torch.device("cpu"))
    assert len(list(done)) == 1
    with pytest.raises(StopIteration):
        next(done)


def test_a_corrupt_jpeg_fails_loudly_not_silently(setup, tmp_path):
    plan = plan_from_transform(setup["tf_val"])
    good = setup["table"].paths[0]
    bad = tmp_path / "truncated.jpg"
    blob = Path(good).read_bytes()
    bad.write_bytes(blob[: len(blob) // 3])  # a header that parses, then no image data
    table = Table(
        csv="mem", separator=",", paths=np.array([str(bad)], dtype=object), captions=np.array(["x"], dtype=object)
    )
    item = RawCaptionDataset(table, plan, setup["tokenizer"], 0)[(0, 0)]
    with pytest.raises(RuntimeError):
        BatchDecoder(plan, torch.device("cpu"))(collate_raw([item]))
