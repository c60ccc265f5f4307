"""clip.features: extract against encode_image batch by batch, recall_at_k against a plain loop."""

import itertools
from typing import List

import pytest
import torch
from _checkpoints import TINY_DIMS, tiny_model
from _zeroshot_inputs import pixel_batch
from torch.utils.data import TensorDataset

from clip import features

N_IMAGES = 7
BATCH = 3


@pytest.fixture(scope="module")
def model():
    return tiny_model("vit").float().eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return pixel_batch(TINY_DIMS["vit"]["image_resolution"], n=N_IMAGES)


def test_extract_gives_encode_image_in_order_with_labels(model, images) -> None:
    labels = torch.arange(N_IMAGES) * 3 % 5
    got, got_labels = features.extract(model, TensorDataset(images, labels), batch_size=BATCH, progress=False)
    with torch.no_grad():  # the same batches through the same code: exact
        expected = torch.cat([model.encode_image(images[i : i + BATCH]) for i in range(0, N_IMAGES, BATCH)])
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert torch.equal(got, expected.float())
    assert torch.equal(got_labels, labels)


class _ImagesOnly(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def test_extract_with_workers_and_without_labels(model, images) -> None:
    got, labels = features.extract(
        model, _ImagesOnly(images), batch_size=BATCH, num_workers=1, progress=False
    )
    expected, _ = features.extract(model, _ImagesOnly(images), batch_size=BATCH, progress=False)
    assert labels is None and torch.equal(got, expected)


@pytest.mark.parametrize(
    "kwargs, error",
    [({"batch_size": 0}, ValueError), ({"num_workers": -1}, ValueError)],
)
def test_extract_rejects_bad_arguments(model, images, kwargs, error) -> None:
    with pytest.raises(error):
        features.extract(model, _ImagesOnly(images), progress=False, **kwargs)


def test_extract_names_items_that_are_not_tensors(model) -> None:
    with pytest.raises(TypeError, match="transform=preprocess"):
        features.extract(model, ["not an image"], progress=False)
    with pytest.raises(ValueError, match="empty"):
        features.extract(model, _ImagesOnly(torch.zeros(0, 3, 32, 32)), progress=False)


def _loop_recall(image_features, text_features, text_to_image: List[int], k: int):
    """Recall at k by plain Python over cosine similarities (an independent computation)."""
    img = [v / v.norm() for v in image_features.double()]
    txt = [v / v.norm() for v in text_features.double()]
    t2i = []
    for t, vector in enumerate(txt):
        order = sorted(range(len(img)), key=lambda i: -float(vector @ img[i]))
        t2i.append(text_to_image[t] in order[:k])
    i2t = []
    for i, vector in enumerate(img):
        mine = [t for t, owner in enumerate(text_to_image) if owner == i]
        if mine:
            order = sorted(range(len(txt)), key=lambda t: -float(vector @ txt[t]))
            i2t.append(any(t in order[:k] for t in mine))
    return sum(i2t) / len(i2t), sum(t2i) / len(t2i)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_at_k_matches_a_plain_loop(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    # Integer draws: distinct similarities (no ties), the same on every CPU.
    image_features = torch.randint(-50, 50, (12, 8), generator=gen).float()
    text_features = torch.randint(-50, 50, (40, 8), generator=gen).float()
    text_to_image = torch.randint(0, 11, (40,), generator=gen).tolist()  # image 11 (maybe more) has no text
    ks = (1, 2, 5, 10, 50)
    got = features.recall_at_k(image_features, text_features, text_to_image, ks=ks)
    assert set(got) == {"image_to_text", "text_to_image"}
    for k in ks:
        i2t, t2i = _loop_recall(image_features, text_features, text_to_image, k)
        assert got["image_to_text"][k] == pytest.approx(i2t) and got["text_to_image"][k] == pytest.approx(t2i)
    assert got["text_to_image"][50] == 1.0 and got["image_to_text"][50] == 1.0


def test_recall_perfect_pairs() -> None:
    eye = torch.eye(6)
    texts = torch.cat([eye, eye])  # two captions per image, each exactly its image
    got = features.recall_at_k(eye, texts, list(itertools.chain(range(6), range(6))), ks=(1,))
    assert got == {"image_to_text": {1: 1.0}, "text_to_image": {1: 1.0}}


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.zeros(3, 4), torch.zeros(2, 5), [0, 1]), "width"),
        ((torch.zeros(3, 4), torch.zeros(2, 4), [0]), "one image index per text"),
        ((torch.zeros(3, 4), torch.zeros(2, 4), [0, 3]), "outside"),
        ((torch.zeros(3), torch.zeros(2, 4), [0, 1]), "2-D"),
    ],
)
def test_recall_rejects_bad_input(args, match) -> None:
    with pytest.raises(ValueError, match=match):
        features.recall_at_k(*args)
    with pytest.raises(ValueError, match="ks"):
        features.recall_at_k(torch.ones(2, 4), torch.ones(2, 4), [0, 1], ks=(0,))
