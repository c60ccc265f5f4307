"""clip.zeroshot: the package data, and the release notebook's recipe against the original's output."""

import importlib
import json
from pathlib import Path

import pytest
import torch
from _checkpoints import TINY_DIMS, release_archive, tiny_state_dict
from _golden import digest
from _zeroshot_inputs import CLASSES, TEMPLATES, pixel_batch

import clip
from clip import zeroshot

GOLDEN = Path(__file__).resolve().parent / "data" / "zeroshot_golden.json"
REGENERATE = "stale golden data: regenerate with tests/data/make_zeroshot_golden.py"
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
# fp32 through the tiny towers (2 layers, width 64), ours batched across classes and the oracle one
# class at a time: kernels may sum in another order (batch shape, AVX2 / AVX-512 / NEON), which moves
# unit-length entries of size ~0.2 by a few float32 ulps (~3e-8 each; 0 on the CPU that made the
# golden). 1e-6 on the unit-length columns leaves a margin of 10x or more and still catches a change
# to the recipe (e.g. averaging before normalising). Logits are 100 x cosine: the bound times 100.
CLASSIFIER_ATOL = 1e-6
LOGITS_ATOL = 100 * CLASSIFIER_ATOL


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def test_data_is_read_lazily_and_has_the_release_sizes() -> None:
    fresh = importlib.reload(zeroshot)  # runs the module body again: it must read no file
    assert fresh._read.cache_info().currsize == 0
    sizes = [len(getattr(fresh, name)) for name in fresh._DATA]
    assert sizes == [1000, 80, 10, 100, 18]
    assert fresh._read.cache_info().currsize == 2
    assert "IMAGENET_CLASSES" in dir(fresh)
    with pytest.raises(AttributeError):
        fresh.NO_SUCH_THING  # noqa: B018


def test_data_is_well_formed_and_matches_the_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(zeroshot.IMAGENET_CLASSES) == 1000 and len(set(zeroshot.IMAGENET_TEMPLATES)) == 80
    for templates in (zeroshot.IMAGENET_TEMPLATES, zeroshot.CIFAR_TEMPLATES):
        assert all(template.count("{}") == 1 for template in templates)
    monkeypatch.syspath_prepend(str(NOTEBOOKS))  # undone after the test
    from _datasets import CIFAR100_CLASSES  # torchvision's names, underscores and all

    assert list(zeroshot.CIFAR100_CLASSES) == [name.replace("_", " ") for name in CIFAR100_CLASSES]
    assert len(set(zeroshot.CIFAR_TEMPLATES)) == 18 and len(set(zeroshot.CIFAR10_CLASSES)) == 10
    assert isinstance(zeroshot.CIFAR10_CLASSES, tuple)  # shared data cannot be altered by a caller


@pytest.mark.golden
@pytest.mark.parametrize("arch", ["vit", "resnet"])
@pytest.mark.parametrize("batch_size", [256, 3])  # one call, and chunks that split classes
def test_classifier_and_logits_match_the_original(golden, arch: str, batch_size: int) -> None:
    entry = golden["archives"][arch]
    images = pixel_batch(TINY_DIMS[arch]["image_resolution"])
    assert entry["state_sha256"] == digest(tiny_state_dict(arch)), REGENERATE
    assert entry["images_sha256"] == digest({"images": images}), REGENERATE
    assert golden["classes"] == CLASSES and golden["templates"] == TEMPLATES, REGENERATE
    model, _ = clip.load(str(release_archive(arch)), device="cpu", jit=False)
    classifier = zeroshot.build_classifier(model, CLASSES, TEMPLATES, batch_size=batch_size, progress=False)
    assert classifier.shape == (TINY_DIMS[arch]["embed_dim"], len(CLASSES))
    assert classifier.dtype == torch.float32
    torch.testing.assert_close(classifier, torch.tensor(entry["classifier"]), atol=CLASSIFIER_ATOL, rtol=0)
    logits = zeroshot.predict(model, images, classifier)
    torch.testing.assert_close(logits, torch.tensor(entry["logits"]), atol=LOGITS_ATOL, rtol=0)


def test_accuracy_counts_hits_as_the_release_notebook() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 1000, (50, 12), generator=gen).float()
    targets = torch.randint(0, 12, (50,), generator=gen)
    ranks = (logits > logits.gather(1, targets.view(-1, 1))).sum(dim=1)  # classes strictly above the target
    expected = [float((ranks < k).sum()) for k in (1, 3, 12)]
    assert zeroshot.accuracy(logits, targets, topk=(1, 3, 12)) == expected
    assert expected[-1] == 50.0


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda m: zeroshot.build_classifier(m, "cat", TEMPLATES), TypeError),
        (lambda m: zeroshot.build_classifier(m, [], TEMPLATES), ValueError),
        (lambda m: zeroshot.build_classifier(m, ["cat"], ["a photo"]), ValueError),
        (lambda m: zeroshot.build_classifier(m, ["cat"], TEMPLATES, batch_size=0), ValueError),
        (
            lambda m: zeroshot.accuracy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), topk=(5,)),
            ValueError,
        ),
        (lambda m: zeroshot.accuracy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long)), ValueError),
    ],
)
def test_bad_arguments_are_named(call, error) -> None:
    model, _ = clip.load(str(release_archive("vit")), device="cpu", jit=False)
    with pytest.raises(error):
        call(model)


def test_prompt_files_are_package_data() -> None:
    """setup.py's package_data globs cover every file of clip/prompts (else `pip install .` drops them)."""
    import ast
    import fnmatch

    setup_py = Path(__file__).resolve().parent.parent / "setup.py"
    call = next(
        node
        for node in ast.walk(ast.parse(setup_py.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup"
    )
    package_data = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "package_data"))
    files = sorted(
        p.relative_to(zeroshot.PROMPTS_DIR.parent).as_posix() for p in zeroshot.PROMPTS_DIR.iterdir()
    )
    assert files and all(any(fnmatch.fnmatch(f, glob) for glob in package_data["clip"]) for f in files)
