"""Inputs of the zero-shot golden (tests/data/make_zeroshot_golden.py) and of the tests that check it."""

from typing import List

import torch

# A few classes and templates of each data set: enough to exercise the ensemble and the batching.
CLASSES: List[str] = [
    "tench",
    "goldfish",
    "great white shark",
    "aquarium fish",
    "maple tree",
    "airplane",
    "cat",
]
TEMPLATES: List[str] = ["a photo of a {}.", "a bad photo of a {}.", "a sculpture of the {}.", "itap of a {}."]
N_IMAGES = 5
IMAGE_SEED = 14
LEVELS = 256
LEVEL_SCALE = 64.0  # pixel levels 0..255 -> [-2, 2): exact in float32
LEVEL_SHIFT = 2.0


def pixel_batch(resolution: int, n: int = N_IMAGES, seed: int = IMAGE_SEED) -> torch.Tensor:
    """(n, 3, resolution, resolution) float32 "preprocessed" images from integer draws (portable)."""
    gen = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, LEVELS, (n, 3, resolution, resolution), generator=gen)
    return levels.to(torch.float32) / LEVEL_SCALE - LEVEL_SHIFT
