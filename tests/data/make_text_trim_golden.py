"""Make tests/data/text_trim_golden.pt with the ORIGINAL implementation (the oracle).

Run with our virtual environment; the script runs itself again with only the oracle folder on
PYTHONPATH and a scratch working directory, so that our own `clip/` package cannot shadow it:

    .venv/bin/python tests/data/make_text_trim_golden.py [--oracle DIR]

(DIR defaults to $CLIP_ORACLE_PATH, else .oracle in the repository.)

For tests/test_text_trim.py: the original's fp32 `encode_text` (all 77 positions, always) of the
`build_model(sd).float()` models of tests/support/_model_factory.py (tiny-vit, tiny-rn, ViT-B/32),
on batches whose longest text ends at different positions:

- mixed: the empty text, a prompt, a word and a 30-odd token caption;
- empty: the empty text alone (start and end of text only);
- full: texts cut to 77 tokens (end-of-text at the last position);
- mixed_full: the mixed batch plus one 77-token text.
"""

import importlib.util
import sys
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent
FACTORY_PATH = DATA.parent / "support" / "_model_factory.py"
OUTPUT = DATA / "text_trim_golden.pt"
sys.path.insert(0, str(DATA.parent / "support"))  # _golden (imports no clip)
from _golden import oracle_argument, under_oracle  # noqa: E402

SEEDS = {"tiny-vit": 21, "tiny-rn": 22, "ViT-B/32": 23}
LONG = " ".join(["a very long caption that goes on and on about a red bicycle"] * 12)
MIXED = [
    "",
    "a photo of a goldfish.",
    "dog",
    "a black and white photograph of two children feeding ducks beside a pond on a grey winter "
    "morning in the park",
]
FULL = [LONG, "itap of " + LONG]


def load_factory():
    spec = importlib.util.spec_from_file_location("_model_factory", FACTORY_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    under_oracle(__file__, oracle_argument(__doc__))
    import clip  # the oracle (checked by under_oracle)
    from clip.model import build_model

    factory = load_factory()
    batches = {
        "mixed": clip.tokenize(MIXED),
        "empty": clip.tokenize([""]),
        "full": clip.tokenize(FULL, truncate=True),
        "mixed_full": torch.cat([clip.tokenize(MIXED), clip.tokenize(FULL[:1], truncate=True)]),
    }
    batches = {name: tokens.to(torch.int64) for name, tokens in batches.items()}
    golden = {"seeds": SEEDS, "tokens": batches, "features": {}, "oracle": "clip-anytorch 2.6.0"}
    for config, seed in SEEDS.items():
        model = build_model(factory.make_state_dict(config, seed)).float()
        with torch.no_grad():
            golden["features"][config] = {name: model.encode_text(t) for name, t in batches.items()}
        lengths = {name: int(t.argmax(dim=-1).max()) + 1 for name, t in batches.items()}
        print(f"{config}: longest text per batch {lengths}")
    golden["torch"] = str(torch.__version__)
    torch.save(golden, OUTPUT)


if __name__ == "__main__":
    main()
