"""The suite gives the same verdict on every CPU: fixtures are bit-identical across kernel paths,
and the golden-dependent tests pass on kernels other than the ones this machine picks by default.

Golden files are made on one machine and checked on others (AVX2, AVX-512, AMX, ARM). Two things
keep that honest:

* everything a golden or digest is keyed on (seeded weights, images, token ids) is built from
  integer draws and exactly rounded operations (tests/support/_model_factory.py and _images.py), so
  its bytes do not depend on the CPU. `test_fixtures_are_bit_identical_across_kernel_paths` rebuilds
  them in processes that run other kernels and compares digests;
* outputs of floating-point kernels are compared with tolerances stated next to each comparison.
  `test_golden_tests_pass_on_other_kernels` runs every test marked `golden` again in a process
  whose kernels differ from this one's, as far as one machine can make them differ: ATen's
  vectorised kernels (`ATEN_CPU_CAPABILITY`), oneDNN's (`ONEDNN_MAX_CPU_ISA`) and MKL's
  (`MKL_ENABLE_INSTRUCTIONS`) capped at their baseline instruction sets.
"""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# ATen's names for its kernel paths on x86-64; the baseline one runs everywhere. torch reports it
# as "NO AVX" before 2.5 and "DEFAULT" since.
BASELINE_CAPABILITY = "default"
REPORTED_NAMES = {"no avx": BASELINE_CAPABILITY}
X86_CAPABILITIES = {"avx2": ("avx2", "fma"), "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq")}
# The baseline instruction sets of the BLAS and DNN libraries torch calls for matrix products.
BASELINE_LIBRARY_ENV = {"ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}
SUBPROCESS_TIMEOUT_S = 600

_DIGEST_SCRIPT = r"""
import json, sys
import torch
sys.path.insert(0, sys.argv[1])
from _checkpoints import example_inputs
from _golden import digest
from _images import build_images, image_digest
from _model_factory import TINY, make_images, make_state_dict

out = {"capability": torch.backends.cpu.get_cpu_capability()}
for name in TINY:
    out[f"state:{name}"] = digest(make_state_dict(name, 11))
    out[f"images:{name}"] = digest({"images": make_images(TINY[name]["image_resolution"], 7)})
for arch in ("vit", "resnet"):
    images, tokens = example_inputs(arch)
    out[f"inputs:{arch}"] = digest({"images": images, "tokens": tokens})
for name, image in build_images(include_huge=False).items():
    out[f"pil:{name}"] = image_digest(image)
print(json.dumps(out))
"""


def _cpu_flags() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    return {
        flag
        for line in text.splitlines()
        if line.startswith("flags")
        for flag in line.split(":", 1)[1].split()
    }


def other_kernel_paths() -> List[str]:
    """ATen capabilities this CPU can run other than the one torch picked: the baseline always, and
    AVX2 as well on AVX-512 machines (the two most common x86 servers today)."""
    current = _capability(torch.backends.cpu.get_cpu_capability())
    paths = [] if current == BASELINE_CAPABILITY else [BASELINE_CAPABILITY]
    if platform.machine().lower() in ("x86_64", "amd64") and current.startswith("avx512"):
        if all(flag in _cpu_flags() for flag in X86_CAPABILITIES["avx2"]):
            paths.append("avx2")
    return paths


def _capability(reported: str) -> str:
    """The ATEN_CPU_CAPABILITY value for what `torch.backends.cpu.get_cpu_capability()` reports."""
    name = reported.lower()
    return REPORTED_NAMES.get(name, name)


def _kernel_env(capability: str) -> Dict[str, str]:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, **BASELINE_LIBRARY_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def _digests(env: Dict[str, str]) -> Dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", _DIGEST_SCRIPT, str(TESTS / "support")],
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _needs_other_paths() -> List[str]:
    paths = other_kernel_paths()
    if not paths:
        pytest.skip("torch already runs its baseline kernels here (no other kernel path to compare with)")
    return paths


def test_fixtures_are_bit_identical_across_kernel_paths() -> None:
    here = _digests({**os.environ, "PYTHONPATH": str(REPO)})
    assert len(here) > 10
    for capability in _needs_other_paths():
        there = _digests(_kernel_env(capability))
        assert _capability(there.pop("capability")) == capability, "ATEN_CPU_CAPABILITY was not honoured"
        here_values = {key: value for key, value in here.items() if key != "capability"}
        differing = sorted(key for key in here_values if there.get(key) != here_values[key])
        assert not differing, f"fixtures differ between kernel paths {here['capability']} and {capability}"


@pytest.mark.slow
def test_golden_tests_pass_on_other_kernels() -> None:
    for capability in _needs_other_paths():
        command = [sys.executable, "-m", "pytest", "-q", "-m", "golden", "-p", "no:cacheprovider", str(TESTS)]
        done = subprocess.run(
            command,
            cwd=REPO,
            env=_kernel_env(capability),
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT_S,
        )
        summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:]
        assert done.returncode == 0, (
            f"golden tests under ATEN_CPU_CAPABILITY={capability}:\n{done.stdout[-6000:]}"
        )
        assert " passed" in summary and "failed" not in summary, summary
