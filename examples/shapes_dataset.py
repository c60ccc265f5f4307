"""A procedural image-caption dataset: coloured shapes at positions and sizes, captions from a grammar.

    python examples/shapes_dataset.py OUT_DIR              # train.csv (seen combinations), val.csv
    clip train --train-data OUT_DIR/train.csv --val-data OUT_DIR/val.csv --model-config tiny.json ...

Every image shows one shape (circle, square, triangle, cross) in one colour (red, green, blue,
yellow), at one of five positions and one of two sizes, with a small jitter, on a grey background.
Captions come from a small grammar ("a small red circle on the left", "a picture of a blue
square", ...). `make_split` holds some shape-colour combinations out of the training file: the
validation file holds only those, with a `label` column ("a red circle"), so zero-shot accuracy
on it measures whether a model composes colour and shape words it only saw apart.

Everything is drawn from `random.Random(seed)` with integer coordinates: the files are the same
on every machine.
"""

import argparse
import csv
import os
import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw

__all__ = [
    "SHAPES",
    "COLOURS",
    "POSITIONS",
    "SIZES",
    "held_out_combinations",
    "class_prompt",
    "generate",
    "make_split",
]

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 210, 20),
}
POSITIONS: Dict[str, Tuple[float, float]] = {  # centre, as fractions of the image side
    "left": (0.28, 0.5),
    "right": (0.72, 0.5),
    "top": (0.5, 0.28),
    "bottom": (0.5, 0.72),
    "centre": (0.5, 0.5),
}
SIZES: Dict[str, float] = {"small": 0.2, "large": 0.3}  # half-side, as a fraction of the image side
JITTER = 0.04  # fraction of the side a shape's centre may move
BACKGROUND = (118, 128)  # grey levels the background is drawn from
TEMPLATES = (
    "a {colour} {shape}",
    "a {size} {colour} {shape}",
    "a {colour} {shape} on the {position}",
    "a {size} {colour} {shape} on the {position}",
    "a picture of a {colour} {shape}",
    "a {colour} {shape}, {size}, at the {position}",
)
PROMPT = "a {colour} {shape}"
CSV_FIELDS = ("filepath", "title", "label")

Combination = Tuple[str, str]  # (shape, colour)


def class_prompt(shape: str, colour: str) -> str:
    """The zero-shot prompt (and validation label) of a combination."""
    return PROMPT.format(colour=colour, shape=shape)


def held_out_combinations() -> List[Combination]:
    """One combination per shape and per colour (a diagonal): each word is still seen in training."""
    colours = list(COLOURS)
    return [(shape, colours[i % len(colours)]) for i, shape in enumerate(SHAPES)]


def _draw(shape: str, colour: str, position: str, size: str, side: int, rng: random.Random) -> Image.Image:
    shade = rng.randint(*BACKGROUND)
    image = Image.new("RGB", (side, side), (shade, shade, shade))
    draw = ImageDraw.Draw(image)
    jitter = round(JITTER * side)
    cx = round(POSITIONS[position][0] * side) + rng.randint(-jitter, jitter)
    cy = round(POSITIONS[position][1] * side) + rng.randint(-jitter, jitter)
    r = max(2, round(SIZES[size] * side))
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "cross":
        arm = max(1, r // 3)
        draw.rectangle([cx - r, cy - arm, cx + r, cy + arm], fill=fill)
        draw.rectangle([cx - arm, cy - r, cx + arm, cy + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return image


def generate(
    out_dir: str,
    name: str,
    count: int,
    combinations: Sequence[Combination],
    seed: int = 0,
    side: int = 32,
) -> Path:
    """Write `count` PNGs of the given combinations under OUT_DIR/NAME/ and OUT_DIR/NAME.csv; return it.

    The CSV has columns filepath (relative to OUT_DIR), title (a caption from the grammar) and
    label (the combination's prompt). Files are written to temporary names and renamed.
    """
    rng = random.Random(f"{seed}-{name}")
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        shape, colour = combinations[rng.randrange(len(combinations))]
        position, size = rng.choice(list(POSITIONS)), rng.choice(list(SIZES))
        caption = rng.choice(TEMPLATES).format(colour=colour, shape=shape, position=position, size=size)
        relative = f"{name}/{index:06d}.png"
        target = Path(out_dir) / relative
        partial = target.with_name(f".{target.name}.tmp")
        _draw(shape, colour, position, size, side, rng).save(partial, format="PNG")
        os.replace(partial, target)
        rows.append({"filepath": relative, "title": caption, "label": class_prompt(shape, colour)})
    csv_path = Path(out_dir) / f"{name}.csv"
    partial = csv_path.with_name(f".{csv_path.name}.tmp")
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, csv_path)
    return csv_path


def make_split(
    out_dir: str,
    train_count: int = 2000,
    val_count: int = 200,
    seed: int = 0,
    side: int = 32,
    held_out: Optional[Sequence[Combination]] = None,
) -> Tuple[Path, Path]:
    """(train.csv of the seen combinations, val.csv of the held-out ones) under `out_dir`."""
    held = list(held_out if held_out is not None else held_out_combinations())
    seen = [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in held]
    return (
        generate(out_dir, "train", train_count, seen, seed, side),
        generate(out_dir, "val", val_count, held, seed, side),
    )


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=2000, help="training images (default 2000)")
    parser.add_argument("--val", type=int, default=200, help="validation images (default 200)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train_csv, val_csv = make_split(args.out_dir, args.train, args.val, args.seed, args.size)
    print(f"wrote {train_csv} and {val_csv}")  # noqa: T201 - a script


if __name__ == "__main__":
    main()
