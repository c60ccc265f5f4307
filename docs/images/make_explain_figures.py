"""Make the pictures of docs/explain.md (no released weights needed; about 20 seconds on 2 cores).

    python docs/images/make_explain_figures.py

* explain_shapes.png: `clip.explain.figure` for a tiny CLIP trained here for 300 steps on pictures of
  two coloured shapes captioned "a red circle and a blue square" (tests/support/_shape_scenes.py),
  explaining a new picture of a red circle and a blue square with three labels;
* explain_clip_png.png: what `clip explain CLIP.png --labels "a diagram" "a dog"` draws, here with a
  tiny random model (tests/support/_checkpoints.py): the layout of the figure, not what ViT-B/32 sees.
"""

import random
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))  # a script, not a test: the helpers by path

from _checkpoints import release_archive  # noqa: E402
from _shape_scenes import Vocabulary, scene, to_tensor, train_tiny_clip  # noqa: E402

from clip import explain  # noqa: E402

TRAIN_STEPS = 300


def shapes_figure(out: Path) -> None:
    torch.manual_seed(0)
    vocab = Vocabulary()
    model = train_tiny_clip(vocab, steps=TRAIN_STEPS)
    picture = scene(random.Random(5), [("circle", "red", 1), ("square", "blue", 2)])
    labels = ["a red circle", "a blue square", "a green triangle"]
    texts = vocab(labels)
    image = to_tensor(picture).unsqueeze(0)
    with torch.no_grad():
        logits, _ = model(image, texts)
    probabilities = logits.softmax(dim=-1)[0].tolist()
    relevances = explain.relevance(model, image.expand(len(labels), -1, -1, -1), texts)
    explain.figure(picture, labels, relevances, probabilities).save(out)  # token pieces from clip.tokenize


def clip_png_figure(out: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "clip", "explain", str(REPO / "CLIP.png"), "--labels", "a diagram"]
        command += ["a dog", "--model", str(release_archive("vit")), "-o", str(out)]
        subprocess.run(command, check=True, cwd=scratch)


if __name__ == "__main__":
    shapes_figure(HERE / "explain_shapes.png")
    clip_png_figure(HERE / "explain_clip_png.png")
    print("wrote", HERE / "explain_shapes.png", HERE / "explain_clip_png.png")  # noqa: T201 - a script
