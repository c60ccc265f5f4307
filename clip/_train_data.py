"""Image-caption pairs from a CSV/TSV file, for `clip.train`: rows read once, images on demand.

Rows with an empty caption are dropped when the file is read; rows whose image is missing or
unreadable (not an image, truncated, or so large Pillow refuses it as a possible decompression
bomb) are skipped when they are met (the next usable row takes their place, so batches keep their
size on every rank). Both are counted, never fatal, unless no row at all has a readable image.
"""

import csv
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Set, Tuple

import torch
from torch.utils.data import Dataset

__all__ = ["CsvDataset", "collate", "default_separator", "LABEL_KEY"]

EXAMPLES_SHOWN = 3  # missing image files named in a message
LABEL_KEY = "label"  # an optional column of validation files: the class name, for zero-shot accuracy
CSV_SUFFIX = ".csv"
Sample = Tuple[torch.Tensor, torch.Tensor, Tuple[int, ...]]  # (image (3, R, R), tokens (L,), bad rows passed)


def default_separator(path: str) -> str:
    """The separator of a data file when none is given: ',' for a .csv file, else a tab (open_clip's)."""
    return "," if Path(path).suffix.lower() == CSV_SUFFIX else "\t"


class CsvDataset(Dataset):
    """(preprocessed image, token ids, bad rows passed over) for each usable row of a CSV/TSV file.

    Args:
        path: the file; its first line names the columns.
        img_key, caption_key: the columns holding the image path and the caption. A relative image
            path is looked up in the file's folder first, then in the working directory.
        separator: the column separator.
        transform: PIL image -> tensor (the model's `preprocess`).
        tokenize: list of captions -> (N, L) token ids.
    """

    def __init__(
        self,
        path: str,
        img_key: str,
        caption_key: str,
        separator: str,
        transform: Callable,
        tokenize: Callable[[List[str]], torch.Tensor],
    ) -> None:
        self.path = path
        self.transform = transform
        self.tokenize = tokenize
        self.folder = folder = Path(path).resolve().parent
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter=separator)
            columns = reader.fieldnames or []
            missing = [key for key in (img_key, caption_key) if key not in columns]
            if missing:
                raise ValueError(
                    f"{path}: no column {', '.join(map(repr, missing))}; the columns are {columns} "
                    f"(separator {separator!r}). Name the right ones with --csv-img-key / --csv-caption-key, "
                    "or the separator with --csv-separator."
                )
            self.images: List[str] = []
            self.captions: List[str] = []
            self.labels: Optional[List[str]] = [] if LABEL_KEY in columns else None
            self.empty_captions = 0
            for row in reader:
                caption = (row.get(caption_key) or "").strip()
                image = (row.get(img_key) or "").strip()
                if not caption or not image:
                    self.empty_captions += 1
                    continue
                self.images.append(_resolve(image, folder))
                self.captions.append(caption)
                if self.labels is not None:
                    self.labels.append((row.get(LABEL_KEY) or "").strip())
        if not self.images:
            raise ValueError(
                f"{path}: no usable rows (every caption or image path is empty, or the file is empty)"
            )

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, index: int) -> Optional[torch.Tensor]:
        """The preprocessed image of row `index`, or None when it is missing or unreadable."""
        from PIL import Image

        try:
            with Image.open(self.images[index]) as image:
                return self.transform(image)
        # OSError covers a missing file and Pillow's UnidentifiedImageError; SyntaxError and EOFError
        # are what some of its decoders raise for a damaged file
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
            return None

    def missing_files(self) -> List[str]:
        """The image paths of the rows whose file does not exist."""
        return [path for path in self.images if not os.path.exists(path)]

    def missing_note(self) -> str:
        """ " (N of them name a missing image file, e.g. ...)", or "" when every file exists."""
        missing = self.missing_files()
        if not missing:
            return ""
        examples = ", ".join(map(repr, missing[:EXAMPLES_SHOWN]))
        return f" ({len(missing)} of them name a missing image file, e.g. {examples})"

    def first_readable(self) -> int:
        """The first row whose image can be read; a ValueError that says why when no row's can."""
        for row in range(len(self)):
            if self.load_image(row) is not None:
                return row
        missing = self.missing_files()
        if len(missing) == len(self):
            examples = ", ".join(map(repr, missing[:EXAMPLES_SHOWN]))
            raise ValueError(
                f"{self.path}: the image files of all {len(self)} rows are missing (e.g. {examples}); "
                f"relative paths are read from the file's folder ({self.folder}), then the working directory"
            )
        raise ValueError(
            f"{self.path}: none of its {len(self)} rows has a readable image{self.missing_note()}"
        )

    def __getitem__(self, index: int) -> Sample:
        for offset in range(len(self)):
            row = (index + offset) % len(self)
            image = self.load_image(row)
            if image is not None:
                bad = tuple((index + k) % len(self) for k in range(offset))
                return image, self.tokenize([self.captions[row]])[0], bad
        raise RuntimeError(f"{self.path}: no row has a readable image")


def collate(samples: Sequence[Sample]) -> Tuple[torch.Tensor, torch.Tensor, Set[int]]:
    """Stack images (N, 3, R, R) and tokens (N, L); the set of bad rows passed over."""
    images, tokens, bad = zip(*samples)
    return torch.stack(images), torch.stack(tokens), {row for rows in bad for row in rows}


def _resolve(image: str, folder: Path) -> str:
    if os.path.isabs(image):
        return image
    beside = folder / image
    return str(beside) if beside.exists() or not os.path.exists(image) else os.path.abspath(image)
