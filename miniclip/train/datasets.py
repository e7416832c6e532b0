"""Training pairs listed on disk, indexed up front: the three layouts `miniclip train` shuffles whole.

- `.csv` with a header `image,caption`, image paths relative to the file (as `miniclip eval retrieval`);
- `.jsonl`, one {"image": ..., "caption": ...} a line, paths relative to the file;
- a folder of images, each with a same-named `.txt` caption beside it (`cat.jpg` + `cat.txt`).

(WebDataset tar shards, the fourth layout, are streamed instead: shards.py.)

Indexing reads only the tables and the folder listing (no image is decoded), and gives one list of examples,
in a fixed order, that ShuffledBatches draws from by index: the data's position in a run is its step count.

An example without a caption (an empty cell, a missing or empty .txt) is left out at indexing and counted; an
image that cannot be decoded is found when its batch is read, and left out of that batch
(`TrainPairs.__getitem__` returns the reason instead of pixels). Neither stops the run.
"""

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset

from ..errors import InputError
from ..evaluate.datasets import IMAGE_SUFFIXES, images_below


@dataclass
class Example:
    image: Path
    caption: str
    name: str  # what messages call it


@dataclass
class Index:
    examples: list[Example]
    skipped: list[str] = field(default_factory=list)  # "name (why)" for each pair left out at indexing


def read_examples(data) -> Index:
    """The training pairs of `data` (see the module docstring for the layouts), in a fixed order."""
    path = Path(data)
    if path.is_dir():
        return folder_examples(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such training data: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return table_examples(path, csv_rows(path))
    if suffix == ".jsonl":
        return table_examples(path, jsonl_rows(path))
    raise InputError(f"{path}: training data is a .csv (header image,caption), a .jsonl, a folder of images with "
                     f".txt captions, or WebDataset tar shards (data/{{000..009}}.tar), not {suffix or 'this file'}")


def csv_rows(path: Path) -> list[tuple[int, dict]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("image", "caption") if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: the header lacks {', '.join(missing)}; expected a first line image,caption")
        return [(reader.line_num, row) for row in reader]


def jsonl_rows(path: Path) -> list[tuple[int, dict]]:
    rows = []
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if text.strip():
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}, line {line}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("image"), str):
                raise InputError(f"{path}, line {line}: expected an object with \"image\" (a path) and \"caption\"")
            rows.append((line, row))
    return rows


def table_examples(path: Path, rows) -> Index:
    """Rows of a .csv or .jsonl: a missing image file is an error (a typo in the table), a missing caption a
    skipped pair."""
    index = Index([])
    for line, row in rows:
        image = path.parent / (row.get("image") or "").strip()
        if not image.is_file():
            raise InputError(f"{path}, line {line}: no such image file: {image}")
        caption = row.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            index.skipped.append(f"{path}, line {line} (no caption)")
            continue
        index.examples.append(Example(image, caption.strip(), str(image)))
    return check_some(index, path)


def folder_examples(folder: Path) -> Index:
    index = Index([])
    for image in images_below(folder):
        txt = image.with_suffix(".txt")
        caption = txt.read_text(encoding="utf-8").strip() if txt.is_file() else ""
        if not caption:
            index.skipped.append(f"{image} (no caption: {txt.name} {'is empty' if txt.is_file() else 'is missing'})")
            continue
        index.examples.append(Example(image, caption, str(image)))
    return check_some(index, folder)


def check_some(index: Index, where) -> Index:
    if not index.examples:
        raise InputError(f"{where}: no image-caption pairs (looked for {', '.join(sorted(IMAGE_SUFFIXES))} "
                         f"with captions; {len(index.skipped)} left out)")
    return index


class KeyedBatches:
    """ShuffledBatches' lists of example indices as lists of (step, index): a key unique to an example's place
    in the run, for a random augmentation to seed itself from (the same on resuming)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        for step, batch in enumerate(self.batches, start=self.batches.start):
            yield [(step, i) for i in batch]

    def __len__(self):
        return len(self.batches)


class TrainPairs(Dataset):
    """(step, example index) -> (pixels (3, H, W) or None, caption, None or why the image could not be read).

    transform(image, step, index) -> pixels: the preprocessing, with the key for a random augmentation."""

    def __init__(self, examples: list[Example], transform):
        self.examples, self.transform = examples, transform

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, key):
        step, i = key
        example = self.examples[i]
        try:
            return self.transform(example.image, step, i), example.caption, None
        except (ValueError, OSError) as e:  # miniclip's ImageError is a ValueError
            return None, example.caption, f"{example.name} ({' '.join(str(e).split())})"


def collate(items):
    """TrainPairs items of one batch -> (pixels of the readable ones or None, their captions, [errors])."""
    import torch

    kept = [(pixels, caption) for pixels, caption, error in items if error is None]
    errors = [error for *_, error in items if error is not None]
    pixels = torch.stack([p for p, _ in kept]) if kept else None
    return pixels, [c for _, c in kept], errors
