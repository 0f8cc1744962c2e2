"""A tiny, seeded image-caption dataset for demos, tests and benchmarks (no downloads).

Who uses it: ``hack/demo.py`` (``make demo``), ``hack/bench_trainer.py``, the trainer tests.

    python -m trainer.sample_data --out runs/demo/data --n 256 --val-n 64 --size 64

Each image is a few coloured shapes on a plain background; its caption names the largest shape's
colour and kind and where it sits ("a red circle at the top left"), so a CLIP model can learn
the pairing in a few hundred steps. ``--domain bars`` makes a second, different domain (dark
background, vertical or horizontal bars; "stripes: 3 vertical cyan bars on black"): the
forgetting tests pre-train on shapes and fine-tune on bars. Writes ``OUT/train.csv`` and ``OUT/val.csv`` (comma, header
``filepath,caption``, paths relative to OUT) and ``OUT/images/{train,val}/*.png``. The same
arguments always give the same files.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

COLOURS = {
    "red": (210, 40, 40),
    "green": (40, 160, 70),
    "blue": (40, 70, 210),
    "yellow": (230, 200, 40),
    "purple": (130, 50, 160),
    "orange": (240, 130, 30),
    "black": (20, 20, 20),
    "cyan": (40, 190, 200),
}
KINDS = ("circle", "square", "triangle", "diamond")
#: What ``make demo`` and ``examples/local-cpu.yaml`` use (``runs/demo/data``).
DEMO = {"n": 512, "val_n": 64, "size": 64, "seed": 0}
PLACES = {
    "top left": (0.28, 0.28),
    "top right": (0.72, 0.28),
    "bottom left": (0.28, 0.72),
    "bottom right": (0.72, 0.72),
    "middle": (0.5, 0.5),
}


def _shape(draw, kind: str, cx: float, cy: float, r: float, fill) -> None:
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)


def make_image(rng: random.Random, size: int):
    from PIL import Image, ImageDraw

    bg = tuple(rng.randint(205, 245) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    # a small distractor first, then the named (largest) shape on top
    d_kind, d_col = rng.choice(KINDS), rng.choice(sorted(COLOURS))
    _shape(draw, d_kind, rng.uniform(0.15, 0.85) * size, rng.uniform(0.15, 0.85) * size, size * 0.07, COLOURS[d_col])
    kind, colour, place = rng.choice(KINDS), rng.choice(sorted(COLOURS)), rng.choice(sorted(PLACES))
    fx, fy = PLACES[place]
    jitter = size * 0.05
    _shape(
        draw,
        kind,
        fx * size + rng.uniform(-jitter, jitter),
        fy * size + rng.uniform(-jitter, jitter),
        size * rng.uniform(0.14, 0.2),
        COLOURS[colour],
    )
    where = "in the middle" if place == "middle" else f"at the {place}"
    return img, f"a {colour} {kind} {where}"


def make_bars_image(rng: random.Random, size: int):
    """The second domain: 1-4 bars of one colour on a dark background, a different caption style."""
    from PIL import Image, ImageDraw

    bg = tuple(rng.randint(0, 40) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    count, colour, vertical = rng.randint(1, 4), rng.choice(sorted(COLOURS)), rng.random() < 0.5
    slot = size / count
    for i in range(count):
        a, b = i * slot + slot * 0.25, i * slot + slot * 0.75
        draw.rectangle([a, 0, b, size] if vertical else [0, a, size, b], fill=COLOURS[colour])
    return img, f"stripes: {count} {'vertical' if vertical else 'horizontal'} {colour} bars on black"


DOMAINS = {"shapes": make_image, "bars": make_bars_image}


def write_split(out: Path, split: str, n: int, size: int, seed: int, domain: str = "shapes") -> Path:
    rng = random.Random(f"kubeclip-sample-{seed}-{split}" + ("" if domain == "shapes" else f"-{domain}"))
    make = DOMAINS[domain]
    folder = out / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img, caption = make(rng, size)
        rel = f"images/{split}/{i:05d}.png"
        img.save(out / rel, format="PNG", optimize=False)
        rows.append((rel, caption))
    path = out / f"{split}.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["filepath", "caption"])
        w.writerows(rows)
    return path


def generate(
    out: str | Path, n: int = 256, val_n: int = 64, size: int = 64, seed: int = 0, domain: str = "shapes"
) -> tuple[Path, Path]:
    """Write the dataset (skipped when OUT already holds this exact one) and return the two CSVs."""
    out = Path(out)
    stamp = out / ".generated"
    key = f"n={n} val_n={val_n} size={size} seed={seed}" + ("" if domain == "shapes" else f" domain={domain}") + "\n"
    if stamp.is_file() and stamp.read_text() == key:
        return out / "train.csv", out / "val.csv"
    out.mkdir(parents=True, exist_ok=True)
    train = write_split(out, "train", n, size, seed, domain)
    val = write_split(out, "val", val_n, size, seed, domain)
    stamp.write_text(key)
    return train, val


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--val-n", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--domain", choices=sorted(DOMAINS), default="shapes")
    a = ap.parse_args(argv)
    train, val = generate(a.out, a.n, a.val_n, a.size, a.seed, a.domain)
    print(f"train_csv={train}\nval_csv={val}")


if __name__ == "__main__":
    main()
