"""`torchrun --nproc_per_node=2 -m clip embed` on CPUs (gloo, loopback) gives what one process gives."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _checkpoints import release_archive
from _fake_collections import manifest_with_items
from PIL import Image

from clip.__main__ import main

N_IMAGES = 9
SHARD_SIZE = 2  # 5 shards: ranks 0 and 1 take alternate ones
TIMEOUT_S = 300
# Each image's features come from the same batches either way (batches never straddle shards), but
# in other processes, whose kernels may pick other code paths for the thread count: a few ulps.
FEATURE_ATOL = 1e-5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _argv(src: Path, out: Path) -> list:
    argv = ["embed", str(src), "-o", str(out), "--model", str(release_archive("vit"))]
    return argv + ["--shard-size", str(SHARD_SIZE), "--workers", "0", "--dtype", "float32", "--no-progress"]


def _torchrun(launcher: list, src: Path, out: Path) -> None:
    argv = [*launcher, "clip", *_argv(src, out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]


def _stored(out: Path):
    manifest = manifest_with_items(out)
    return manifest, np.concatenate([np.load(out / shard["images"]) for shard in manifest["shards"]])


@pytest.mark.slow
def test_two_cpu_processes_match_one(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    for index in range(N_IMAGES):
        gen = torch.Generator().manual_seed(index)
        pixels = torch.randint(0, 256, (24 + 5 * index, 33, 3), generator=gen, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(src / f"{index:02d}.png")
    (src / "99-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(_argv(src, tmp_path / "one")) == 0  # one process: this one
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2"]
    launcher += ["--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m"]
    _torchrun(launcher, src, tmp_path / "two")
    (one_manifest, one), (two_manifest, two) = _stored(tmp_path / "one"), _stored(tmp_path / "two")
    assert two_manifest["items"] == one_manifest["items"] and len(one_manifest["items"]) == N_IMAGES
    np.testing.assert_allclose(two, one, atol=FEATURE_ATOL, rtol=0)
    assert (tmp_path / "two" / "errors.tsv").read_text() == (tmp_path / "one" / "errors.tsv").read_text()
    records = [json.loads((tmp_path / "two" / f"shard-{s:05d}.json").read_text()) for s in range(5)]
    assert sum(len(r["rows"]) for r in records) == N_IMAGES
    assert [r["rank"] for r in records] == [0, 1, 0, 1, 0]  # both processes worked, on alternate shards
