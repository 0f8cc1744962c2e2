#!/usr/bin/env python3
"""Generate a synthetic image-caption dataset: JPEGs with varied content and captions that describe them.

Who uses it: ``hack/bench_trainer.py`` (512 images, 64 px) and ``hack/bench_gpu.py`` (tens of
thousands, 256 px), which train kubeclip and open_clip_train on the same files.

Each image: a two-colour gradient background at a random angle, pixel noise (so JPEGs have the
entropy of photographs, not of flat colour), and one to three filled shapes of named colours at
named positions; the caption names the first shape, its colour and position, and the
background colours. Image ``i`` is drawn from ``Random(f"{seed}-{split}-{i}")`` alone, so the
output is byte-identical whatever ``--procs`` is, and images are made in parallel processes.

Layout: ``OUT/images/{train,val}/NNNNNN.jpg``, ``OUT/train.csv`` and ``OUT/val.csv``
(header ``filepath,caption``, absolute paths).

    python hack/peer/dataset.py --n 20480 --size 256 --out /tmp/data [--val-n 0] [--procs 16]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

#: The CSV header this module writes (comma-separated); :func:`oc_csv_args` tells open_clip_train.
IMAGE_KEY, CAPTION_KEY = "filepath", "caption"


def oc_csv_args(train: Path, val: Path | None = None) -> list:
    """open_clip_train's flags that read the CSVs written here (its defaults are tab and ``title``)."""
    args: list = ["--train-data", train]
    if val is not None:
        args += ["--val-data", val]
    return [
        *args,
        "--dataset-type",
        "csv",
        "--csv-separator",
        ",",
        "--csv-img-key",
        IMAGE_KEY,
        "--csv-caption-key",
        CAPTION_KEY,
    ]


COLOURS = {
    "red": (215, 35, 40),
    "green": (40, 160, 70),
    "blue": (35, 70, 210),
    "yellow": (240, 205, 40),
    "purple": (130, 45, 165),
    "orange": (240, 135, 30),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
    "pink": (235, 120, 180),
    "brown": (120, 75, 40),
    "grey": (128, 128, 128),
    "teal": (30, 140, 140),
}
SHAPES = ("circle", "square", "triangle", "diamond", "bar")
PLACES = {
    "top left": (0.28, 0.28),
    "top right": (0.72, 0.28),
    "bottom left": (0.28, 0.72),
    "bottom right": (0.72, 0.72),
    "centre": (0.5, 0.5),
}
TEMPLATES = (
    "a photo of {a} {c} {s} in the {p}",
    "{a} {c} {s} at the {p}, on {ab} {b1} and {b2} background",
    "a picture of {a} {c} {s} on {b1} fading to {b2}",
    "{c} {s}, {p}",
    "a drawing of {a} {c} {s} and {n} other shapes",
)


def draw(seed: str, size: int):
    """One image and its caption, from ``seed`` alone."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    names = sorted(COLOURS)
    b1, b2 = rng.sample(names, 2)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(1, size - 1)
    t = np.clip((np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) + 0.5, 0, 1)[..., None]
    bg = (1 - t) * np.array(COLOURS[b1]) + t * np.array(COLOURS[b2])
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(4, 14), bg.shape)
    img = Image.fromarray(np.clip(bg + noise, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    shapes = []
    for _ in range(rng.randint(1, 3)):
        s, c, p = rng.choice(SHAPES), rng.choice([n for n in names if n not in (b1, b2)]), rng.choice(sorted(PLACES))
        fx, fy = PLACES[p]
        cx, cy = (fx + rng.uniform(-0.06, 0.06)) * size, (fy + rng.uniform(-0.06, 0.06)) * size
        r = rng.uniform(0.09, 0.2) * size
        col = COLOURS[c]
        if s == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
        elif s == "square":
            d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=col)
        elif s == "triangle":
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=col)
        elif s == "diamond":
            d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=col)
        else:
            d.rectangle([cx - 1.6 * r, cy - r / 3, cx + 1.6 * r, cy + r / 3], fill=col)
        shapes.append((s, c, p))
    s, c, p = shapes[0]

    def art(word: str) -> str:
        return "an" if word[0] in "aeiou" else "a"

    caption = rng.choice(TEMPLATES).format(s=s, c=c, p=p, b1=b1, b2=b2, n=len(shapes) - 1, a=art(c), ab=art(b1))
    return img, caption


def _write(job: tuple[str, str, int, int]) -> tuple[str, str]:
    seed, path, size, quality = job
    img, caption = draw(seed, size)
    img.save(path, format="JPEG", quality=quality)
    return path, caption


def write_split(out: Path, split: str, n: int, size: int, seed: int, procs: int, quality: int = 90) -> Path:
    folder = out / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(f"{seed}-{split}-{i}", str((folder / f"{i:06d}.jpg").resolve()), size, quality) for i in range(n)]
    if procs > 1 and n > 64:
        with ProcessPoolExecutor(procs) as pool:
            rows = list(pool.map(_write, jobs, chunksize=64))
    else:
        rows = [_write(j) for j in jobs]
    csv_path = out / f"{split}.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow([IMAGE_KEY, CAPTION_KEY])
        w.writerows(rows)
    return csv_path


def make(out: Path, n: int, size: int, val_n: int = 0, seed: int = 0, procs: int = 0) -> dict:
    """Write the dataset (skipped when ``out`` already holds the same one); return the CSV paths."""
    out = Path(out)
    stamp = out / ".made"
    key = f"n={n} val_n={val_n} size={size} seed={seed} v1"
    paths = {"train": out / "train.csv", "val": out / "val.csv" if val_n else None}
    if stamp.exists() and stamp.read_text() == key:
        return paths
    procs = procs or os.cpu_count() or 1
    write_split(out, "train", n, size, seed, procs)
    if val_n:
        write_split(out, "val", val_n, size, seed, procs)
    stamp.write_text(key)
    return paths


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512, help="training images")
    ap.add_argument("--val-n", type=int, default=64, help="validation images (0: none)")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--procs", type=int, default=0, help="parallel processes (0: one per CPU)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    paths = make(Path(a.out), a.n, a.size, a.val_n, a.seed, a.procs)
    for k, v in paths.items():
        if v:
            print(f"{k}_csv={v}")


if __name__ == "__main__":
    main()
