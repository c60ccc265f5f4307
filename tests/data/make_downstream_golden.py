"""Make tests/data/downstream_golden.pt: what the ORIGINAL returns for each downstream code pattern.

    python tests/data/make_downstream_golden.py [ORACLE_DIR]

ORACLE_DIR holds the original `clip` package (clip-anytorch, installed with
`pip install --no-deps --target DIR clip-anytorch`); default: `$CLIP_ORACLE_PATH`. The patterns are
the functions of tests/support/_downstream.py; they run here in a process that imports the original (from a
temporary working directory, so that this repository's `clip/` cannot shadow it), and
tests/test_downstream.py runs the same functions against this package. Needs torch, torchvision and
transformers (one pattern converts the model to a transformers CLIPModel).

Before writing, checks that the original's ViT-B/32 layout holds 24 `nn.MultiheadAttention` modules.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parent
PATTERNS_PATH = DATA.parent / "support" / "_downstream.py"
GOLDEN_PATH = DATA / "downstream_golden.pt"
RELEASE_VIT_B_32_ATTENTION_LAYERS = 24  # 12 image + 12 text blocks

ORACLE_SCRIPT = """
import importlib.util, sys
from pathlib import Path
import torch
import clip

patterns_path, golden_path, tmp = sys.argv[1], sys.argv[2], Path(sys.argv[4])
expected_count = int(sys.argv[3])
repo = Path(patterns_path).resolve().parent.parent
if str(Path(clip.__file__).resolve()).startswith(str(repo)):
    sys.exit(f"expected the original clip from the oracle folder; got this repository's {clip.__file__}")
spec = importlib.util.spec_from_file_location("_clip_downstream", patterns_path)
patterns = importlib.util.module_from_spec(spec)
spec.loader.exec_module(patterns)
results = patterns.run(clip, tmp, patterns.release_hub_load(clip))
count = results["isinstance_count"]["counts"]["ViT-B/32"]
if count != expected_count:
    sys.exit(f"the original's ViT-B/32 has {count} nn.MultiheadAttention modules, expected {expected_count}")
from importlib.metadata import version
oracle = "clip-anytorch " + version("clip-anytorch")
golden = {"patterns": results, "oracle": oracle, "torch": str(torch.__version__)}
torch.save(golden, golden_path)
for name, outputs in results.items():
    print(name, sorted(outputs))
"""


def main(argv: list) -> int:
    oracle = argv[0] if argv else os.environ.get("CLIP_ORACLE_PATH")
    if not oracle:
        print("usage: make_downstream_golden.py ORACLE_DIR (or set CLIP_ORACLE_PATH)", file=sys.stderr)
        return 2
    oracle = str(Path(oracle).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": oracle, "PYTHONWARNINGS": "ignore"}
        tmp_golden = GOLDEN_PATH.with_name(GOLDEN_PATH.name + ".tmp")
        args = [str(PATTERNS_PATH), str(tmp_golden), str(RELEASE_VIT_B_32_ATTENTION_LAYERS), tmp]
        subprocess.run([sys.executable, "-c", ORACLE_SCRIPT, *args], cwd=tmp, env=env, check=True)
        os.replace(tmp_golden, GOLDEN_PATH)
    print(f"wrote {GOLDEN_PATH} ({GOLDEN_PATH.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
