"""Make tests/data/preprocess_golden.json with the ORIGINAL implementation's preprocessing (the oracle).

Run with our virtual environment; the script runs itself again with only the oracle folder on
PYTHONPATH and a scratch working directory, so that our own `clip/` package cannot shadow it:

    .venv/bin/python tests/data/make_preprocess_golden.py [--oracle DIR]

(DIR defaults to $CLIP_ORACLE_PATH, else .oracle in the repository.)

The oracle is `clip-anytorch` 2.6.0 (`pip install --no-deps --target DIR clip-anytorch==2.6.0
"setuptools<81"`; setuptools for its `pkg_resources` import); its `_transform` is the release's.

What it stores (a few hundred bytes per tensor; see `summarize` in tests/support/_images.py):
- "images": for every image of `tests/support/_images.build_images()` (seeded synthetic images of every PIL
  mode, odd sizes and extreme aspect ratios), the image's digest and a summary of the original's
  `_transform(224)(image)`: SHA256 of the fp32 bytes, float64 sum and sum of squares, and values at
  seeded positions.
- "resolutions": the same for CLIP.png (repository root) and one synthetic image at each released
  input resolution (224, 288, 336, 384, 448).
"""

import importlib.util
import json
import os
import sys
import tempfile
from importlib import metadata
from pathlib import Path

DATA = Path(__file__).resolve().parent
TESTS = DATA.parent
REPO = TESTS.parent
OUTPUT = DATA / "preprocess_golden.json"
CLIP_PNG = REPO / "CLIP.png"
RESOLUTION_IMAGES = ("RGBA-480x640",)
sys.path.insert(0, str(TESTS / "support"))  # _golden (imports no clip)
from _golden import oracle_argument, under_oracle  # noqa: E402


def load_images_module():
    spec = importlib.util.spec_from_file_location("_images", TESTS / "support" / "_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def import_oracle():
    import clip.clip as oracle

    location = Path(oracle.__file__).resolve()
    if REPO in location.parents:
        sys.exit(
            f"refusing to run: `clip` was imported from this repository ({location}), not the oracle; "
            "run from outside the repository with PYTHONPATH=<oracle dir>"
        )
    return oracle


def main() -> None:
    under_oracle(__file__, oracle_argument(__doc__))
    from PIL import Image

    images_module = load_images_module()
    oracle = import_oracle()

    images = images_module.build_images()
    golden = {"oracle": f"clip-anytorch {metadata.version('clip-anytorch')}", "images": {}, "resolutions": {}}
    for name, image in images.items():
        golden["images"][name] = {
            "image_sha256": images_module.image_digest(image),
            "output": images_module.summarize(oracle._transform(224)(image)),
        }
        print(f"{name}: done", flush=True)

    sources = {"CLIP.png": Image.open(CLIP_PNG)}
    sources.update({name: images[name] for name in RESOLUTION_IMAGES})
    for name, image in sources.items():
        golden["resolutions"][name] = {
            "image_sha256": images_module.image_digest(image),
            "outputs": {
                str(n_px): images_module.summarize(oracle._transform(n_px)(image))
                for n_px in images_module.RESOLUTIONS
            },
        }

    # Write to a temporary file first, so a failed run never leaves a half-written golden file.
    fd, tmp = tempfile.mkstemp(dir=DATA, suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(to_json(golden))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the golden file is an ordinary repository file
        os.replace(tmp, OUTPUT)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")


def to_json(golden: dict) -> str:
    """JSON with one line per image, so that a regenerated file diffs image by image."""
    lines = ["{", f' "oracle": {json.dumps(golden["oracle"])},']
    for section in ("images", "resolutions"):
        entries = [f"  {json.dumps(name)}: {json.dumps(entry)}" for name, entry in golden[section].items()]
        closing = "}," if section == "images" else "}"
        lines += [f" {json.dumps(section)}: {{", ",\n".join(entries), f" {closing}"]
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
