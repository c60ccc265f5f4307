"""Two coloured shapes per picture, each in its own quadrant, and a tiny CLIP trained on them in seconds.

For tests/test_explain.py's sanity test: a relevance map "looks at" the shape its text names when
its peak falls in that shape's quadrant (chance: 1 in 4). The shapes and colours are those of
examples/shapes_dataset.py; captions name both shapes ("a red circle and a blue square", in random
order), so the model can only match them by tying each colour to its shape.

The vocabulary is cut to the handful of ids these captions use (kept in order, so the end-of-text
token stays the largest id, as `encode_text` and `relevance` expect): the model's token embedding is
a few rows instead of 49,408, which makes training about ten times faster.
"""

import random
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from _examples import load_example
from PIL import Image, ImageDraw

import clip
from clip.model import CLIP

shapes_dataset = load_example("shapes_dataset")
SHAPES: Sequence[str] = shapes_dataset.SHAPES
COLOURS = shapes_dataset.COLOURS
COMBINATIONS: List[Tuple[str, str]] = [(s, c) for s in SHAPES for c in COLOURS]
SIDE = 32  # pixels; patch 8 -> a 4 x 4 grid, each quadrant 2 x 2 patches
QUADRANTS = ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75))  # centres, as fractions of the side
RADIUS = 0.15  # half-side of a shape, as a fraction of the side
JITTER = 0.04
BACKGROUND = (110, 140)
CONTEXT = 16
MEAN = (0.48145466, 0.4578275, 0.40821073)  # the release's normalisation
STD = (0.26862954, 0.26130258, 0.27577711)
MODEL_DIMS = dict(
    embed_dim=32,
    image_resolution=SIDE,
    vision_layers=1,
    vision_width=64,
    vision_patch_size=8,
    context_length=CONTEXT,
    transformer_width=64,
    transformer_heads=1,
    transformer_layers=1,
)
MAX_LOGIT_SCALE = 4.6052  # ln(100)


def prompt(shape: str, colour: str) -> str:
    return shapes_dataset.class_prompt(shape, colour)


def _draw(draw: ImageDraw.ImageDraw, shape: str, colour: str, cx: int, cy: int, r: int) -> None:
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        arm = max(1, r // 3)
        draw.rectangle([cx - r, cy - arm, cx + r, cy + arm], fill=fill)
        draw.rectangle([cx - arm, cy - r, cx + arm, cy + r], fill=fill)


def scene(rng: random.Random, items: Sequence[Tuple[str, str, int]]) -> Image.Image:
    """A grey picture with (shape, colour, quadrant) items drawn on it."""
    shade = rng.randint(*BACKGROUND)
    image = Image.new("RGB", (SIDE, SIDE), (shade, shade, shade))
    draw = ImageDraw.Draw(image)
    r, jitter = round(RADIUS * SIDE), round(JITTER * SIDE)
    for shape, colour, quadrant in items:
        cx = round(QUADRANTS[quadrant][0] * SIDE) + rng.randint(-jitter, jitter)
        cy = round(QUADRANTS[quadrant][1] * SIDE) + rng.randint(-jitter, jitter)
        _draw(draw, shape, colour, cx, cy, r)
    return image


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, SIDE, SIDE), normalised as preprocess does (the picture is already SIDE x SIDE)."""
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0
    return (pixels - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


class Vocabulary:
    """clip.tokenize's ids mapped onto the few the captions use, in order (end-of-text stays largest)."""

    def __init__(self) -> None:
        words = [prompt(s, c) for s, c in COMBINATIONS] + ["and"]
        used = sorted(set(clip.tokenize(words, context_length=CONTEXT).flatten().tolist()))
        self.size = len(used)
        self.lookup = torch.zeros(int(used[-1]) + 1, dtype=torch.long)
        self.lookup[torch.tensor(used)] = torch.arange(len(used))

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        return self.lookup[clip.tokenize(list(texts), context_length=CONTEXT)]


def training_pairs(rng: random.Random, count: int, vocab: Vocabulary) -> Tuple[torch.Tensor, torch.Tensor]:
    """`count` pictures of two different shapes in two different quadrants, and their captions."""
    images, captions = [], []
    for _ in range(count):
        first, second = rng.sample(COMBINATIONS, 2)
        q1, q2 = rng.sample(range(len(QUADRANTS)), 2)
        images.append(to_tensor(scene(rng, [(*first, q1), (*second, q2)])))
        if rng.random() < 0.5:
            first, second = second, first
        captions.append(f"{prompt(*first)} and {prompt(*second)}")
    return torch.stack(images), vocab(captions)


def train_tiny_clip(
    vocab: Vocabulary, steps: int, seed: int = 0, pairs: int = 2000, batch: int = 100, lr: float = 3e-4
) -> CLIP:
    """A tiny ViT CLIP trained with the contrastive loss on `training_pairs`; returned in eval mode."""
    torch.manual_seed(seed)
    images, tokens = training_pairs(random.Random(seed), pairs, vocab)
    model = CLIP(vocab_size=vocab.size, **MODEL_DIMS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(batch)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, pairs, (batch,), generator=generator)
        logits, _ = model(images[index], tokens[index])
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return model.eval()


def peak_quadrant(heatmap: torch.Tensor) -> int:
    """The quadrant (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) of a (g, g) map's peak."""
    grid = heatmap.shape[-1]
    row, column = divmod(int(heatmap.flatten().argmax()), grid)
    return 2 * (row >= grid // 2) + (column >= grid // 2)
