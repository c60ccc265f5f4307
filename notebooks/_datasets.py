"""Data for the notebooks: the real datasets, or small local substitutes that need no network.

The notebooks call these helpers so that the same cells run in two settings:

* real data (the default): CIFAR-100 through torchvision and ImageNetV2 (matched frequency) from
  ``$CLIP_DATA_DIR`` (default ``~/.cache``), downloaded there when missing, as the release's
  notebooks do;
* ``CLIP_NOTEBOOK_SUBSTITUTE_DATA=1``: a handful of the photographs that ship with scikit-image,
  labelled with classes of each dataset, so that the notebooks run offline in seconds (with a
  test-made checkpoint in CI: the numbers are then meaningless, only the code path is exercised).
"""

import os
import tarfile
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from PIL import Image

__all__ = [
    "CIFAR100_CLASSES",
    "SKIMAGE_DESCRIPTIONS",
    "substitute_data",
    "data_dir",
    "skimage_photo",
    "cifar100_test_set",
    "cifar100",
    "imagenetv2",
    "substitute_subset",
]

SUBSTITUTE_ENV = "CLIP_NOTEBOOK_SUBSTITUTE_DATA"
DATA_DIR_ENV = "CLIP_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache"
CIFAR_SIZE = 32  # CIFAR images are 32 x 32 pixels

# The 100 fine-label names of CIFAR-100, in label order (what torchvision's `CIFAR100.classes` holds).
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle "
    "bowl boy bridge bus butterfly camel can castle caterpillar cattle "
    "chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
    "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard "
    "lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain "
    "mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree "
    "plain plate poppy porcupine possum rabbit raccoon ray road rocket "
    "rose sea seal shark shrew skunk skyscraper snail snake spider "
    "squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor "
    "train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()

# Photographs shipped in scikit-image's data folder, with a one-line description of each.
SKIMAGE_DESCRIPTIONS: Dict[str, str] = {
    "page": "a page of printed text about image segmentation",
    "chelsea": "a tabby cat looking to the side",
    "astronaut": "an astronaut in a spacesuit next to a flag",
    "rocket": "a rocket on its launch pad",
    "motorcycle_right": "a red and black motorcycle parked in a garage",
    "camera": "a man with a camera on a tripod",
    "horse": "the black silhouette of a horse",
    "coffee": "a cup of coffee on a saucer",
}

# Substitute labels: which scikit-image photograph stands for which dataset class.
CIFAR_SUBSTITUTES = {
    "astronaut": "woman",
    "rocket": "rocket",
    "motorcycle_right": "motorcycle",
    "camera": "man",
    "coffee": "cup",
}
IMAGENET_SUBSTITUTES = {
    "chelsea": "tabby cat",
    "coffee": "espresso",
    "rocket": "missile",
    "camera": "tripod",
    "horse": "common sorrel horse",
    "motorcycle_right": "moped",
}
SUBSTITUTE_CLASSES = 20  # classes in the substitute ImageNet classifier (the labelled ones + others)
SUBSTITUTE_TEMPLATES = 4  # templates in the substitute ImageNet classifier

IMAGENETV2_FOLDER = "imagenetv2-matched-frequency-format-val"
IMAGENETV2_URL = (
    "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/imagenetv2-matched-frequency.tar.gz"
)
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def substitute_data() -> bool:
    """True when ``CLIP_NOTEBOOK_SUBSTITUTE_DATA=1``: use the local substitutes."""
    return os.environ.get(SUBSTITUTE_ENV) == "1"


def data_dir() -> Path:
    """Where datasets are kept: ``$CLIP_DATA_DIR``, else ``~/.cache``."""
    return Path(os.path.expanduser(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR))


def skimage_photo(name: str) -> Image.Image:
    """One of scikit-image's bundled photographs (a file in ``skimage.data_dir``), as RGB."""
    import skimage

    folder = Path(skimage.data_dir)
    for suffix in (".png", ".jpg"):
        path = folder / f"{name}{suffix}"
        if path.exists():
            with Image.open(path) as image:
                return image.convert("RGB")
    raise FileNotFoundError(f"scikit-image has no photograph {name!r} in {folder}")


class _LabelledPhotos:
    """A tiny dataset of (PIL image, label index) pairs, shaped like the torchvision datasets."""

    def __init__(
        self,
        classes: Sequence[str],
        labels: Dict[str, str],
        size: Optional[int] = None,
        transform: Optional[Callable[[Image.Image], Any]] = None,
        mirror: bool = False,
    ) -> None:
        self.classes = list(classes)
        self.transform = transform
        self.samples: List[Tuple[Image.Image, int]] = []
        for photo, label in labels.items():
            image = skimage_photo(photo)
            if size is not None:
                image = image.resize((size, size), Image.BICUBIC)
            if mirror:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
            self.samples.append((image, self.classes.index(label)))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        image, label = self.samples[index]
        return (self.transform(image) if self.transform else image), label


def cifar100_test_set() -> Any:
    """CIFAR-100's test split (torchvision; downloaded into `data_dir()` if missing), or the substitute:
    five scikit-image photographs shrunk to 32 x 32 and labelled with CIFAR-100 classes."""
    if substitute_data():
        return _LabelledPhotos(CIFAR100_CLASSES, CIFAR_SUBSTITUTES, size=CIFAR_SIZE)
    from torchvision.datasets import CIFAR100

    return CIFAR100(str(data_dir()), train=False, download=True)


def cifar100(train: bool, transform: Optional[Callable[[Image.Image], Any]] = None) -> Any:
    """CIFAR-100's train or test split with `transform` (torchvision; downloaded into `data_dir()` if
    missing), or the substitute: the five labelled scikit-image photographs at 32 x 32 as the test
    split, and the same photographs mirrored left to right as the train split."""
    if substitute_data():
        return _LabelledPhotos(CIFAR100_CLASSES, CIFAR_SUBSTITUTES, CIFAR_SIZE, transform, mirror=train)
    from torchvision.datasets import CIFAR100

    return CIFAR100(str(data_dir()), train=train, download=True, transform=transform)


class _ImageFolderByIndex:
    """ImageNetV2's layout: one folder per class, named by the class index ("0" ... "999")."""

    def __init__(self, root: Path, transform: Optional[Callable[[Image.Image], Any]] = None) -> None:
        self.transform = transform
        self.samples = sorted(
            (path, int(folder.name))
            for folder in root.iterdir()
            if folder.is_dir() and folder.name.isdigit()
            for path in folder.iterdir()
            if path.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.samples:
            raise FileNotFoundError(f"no images in class folders under {root}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            image = image.convert("RGB")
        return (self.transform(image) if self.transform else image), label


def imagenetv2(classes: Sequence[str], transform: Optional[Callable[[Image.Image], Any]] = None) -> Any:
    """ImageNetV2 matched-frequency (10,000 images; downloaded into `data_dir()` if missing, 1.2 GB),
    or the substitute: six scikit-image photographs labelled with ImageNet classes."""
    if substitute_data():
        return _LabelledPhotos(classes, IMAGENET_SUBSTITUTES, transform=transform)
    root = data_dir() / IMAGENETV2_FOLDER
    if not root.is_dir():
        _download_and_extract(IMAGENETV2_URL, data_dir())
    return _ImageFolderByIndex(root, transform)


def _download_and_extract(url: str, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / url.rsplit("/", 1)[-1]
    partial = archive.with_name(archive.name + ".partial")
    if not archive.exists():
        urllib.request.urlretrieve(url, partial)  # noqa: S310 - a fixed https URL
        partial.replace(archive)
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.12, and security releases of 3.9 to 3.11
            tar.extractall(directory, filter="data")
        else:
            tar.extractall(directory)  # noqa: S202 - the fixed ImageNetV2 archive


def substitute_subset(classes: Sequence[str], templates: Sequence[str]) -> Tuple[List[int], List[str]]:
    """The class indices and templates to use: all of them, or with substitutes a small subset (the
    substitute photographs' classes plus evenly spaced others) to keep the notebook fast."""
    if not substitute_data():
        return list(range(len(classes))), list(templates)
    chosen = sorted({classes.index(label) for label in IMAGENET_SUBSTITUTES.values()})
    step = len(classes) // SUBSTITUTE_CLASSES
    for index in range(0, len(classes), step):
        if len(chosen) >= SUBSTITUTE_CLASSES:
            break
        if index not in chosen:
            chosen.append(index)
    return sorted(chosen), list(templates[:SUBSTITUTE_TEMPLATES])
