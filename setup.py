"""Packaging for `clip`: a drop-in, faithful mirror of OpenAI's CLIP release."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
SUPPORTED_PYTHON_MINORS = (10, 11, 12, 13)  # Python 3.10 to 3.13, tested in CI at both ends

# What the test suite needs beyond the runtime requirements: notebooks run through nbclient.
TEST_REQUIREMENTS = [
    "pytest",
    "hypothesis",
    "numpy",
    "nbclient",
    "nbformat",
    "ipykernel",
    "matplotlib",
    "scikit-image",
    "scikit-learn",
    "transformers",  # oracle of the differential tests (tests/test_differential.py)
    "open_clip_torch",  # oracle of the differential tests
]

# Optional parts: `import clip` never imports them; each feature names its extra when it is missing.
EXTRAS = {
    "onnx": ["onnx", "onnxscript", "onnxruntime"],  # clip export, clip.export.OnnxModel
    "index": ["faiss-cpu"],  # clip index: approximate nearest-neighbour search over a collection
    "serve": ["fastapi", "uvicorn", "python-multipart"],  # clip serve
}
TEST_REQUIREMENTS += [requirement for extra in EXTRAS.values() for requirement in extra]
TEST_REQUIREMENTS += ["httpx"]  # the HTTP client of the server's tests


def read_long_description() -> str:
    """The README for PyPI, where links into the repository (docs/...) would not resolve: such
    relative links become their plain text, which names the page; absolute links stay."""
    readme = (HERE / "README.md").read_text(encoding="utf-8")
    return re.sub(r"\[([^\]]*)\]\((?![a-z][a-z0-9+.-]*:|#)[^)]*\)", r"\1", readme)


def read_requirements() -> list:
    lines = (HERE / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="clip-faithful",  # PyPI's "clip" is an unrelated package; the import name stays `clip`
    version="1.0.0",
    description="Faithful, drop-in mirror of OpenAI's CLIP with safer, faster loading and tokenizing",
    long_description=read_long_description(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    classifiers=[
        "Programming Language :: Python :: 3",
        *(f"Programming Language :: Python :: 3.{minor}" for minor in SUPPORTED_PYTHON_MINORS),
        "License :: OSI Approved :: MIT License",
        "Operating System :: OS Independent",
    ],
    packages=find_packages(include=["clip", "clip.*"]),
    package_data={"clip": ["bpe_simple_vocab_16e6.txt.gz", "CLIP.png", "prompts/*.json", "_serve/static/*"]},
    include_package_data=True,
    install_requires=read_requirements(),
    extras_require={**EXTRAS, "test": TEST_REQUIREMENTS, "dev": ["ruff", *TEST_REQUIREMENTS]},
    entry_points={"console_scripts": ["clip=clip.__main__:main"]},
)
