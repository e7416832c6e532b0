"""Evaluation data on disk: labelled images (an ImageFolder, or a label CSV) and image-caption pairs.

Only paths and labels are read here, so every mistake in the data is reported before a model is loaded.
- ImageFolder: DIR/<class>/**/<image>, one folder per class, as torchvision and the ImageNet, ImageNetV2
  and most other classification datasets are laid out.
- Label CSV: a header `image,label`, image paths relative to the CSV, labels a class index or a class name.
- Pairs (retrieval): the fine-tuning formats, `.csv` with a header `image,caption` or `.jsonl` with one
  {"image": ..., "caption": ...} a line, image paths relative to the file; several rows with one image are
  that image's several captions (Flickr30k and COCO have 5 each in the Karpathy splits).
"""

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageNotFoundError, InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}  # as the command line's


@dataclass
class LabelledImages:
    """Images with their class index; classnames[i] is the text that class i is prompted with."""
    paths: list[Path]
    targets: list[int]
    classnames: list[str]


@dataclass
class Pairs:
    """Unique images, and each caption with the index of its image."""
    images: list[Path]
    captions: list[str]
    caption_image: list[int]  # caption j describes images[caption_image[j]]


def images_below(folder: Path) -> list[Path]:
    """Every image file below `folder`, sorted, hidden files and folders left out."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def image_folder(root, classnames: list[str] | None = None) -> LabelledImages:
    """An ImageFolder: one sub-folder per class.

    Without `classnames` the classes are the folder names, sorted, and the prompts use them as written.
    With them (e.g. ImageNet's 1,000), each folder is matched to a class index: folders named 0, 1, ...
    (ImageNetV2) by their number; else folders named after classes by name; else, when there are exactly
    as many folders as classes, in sorted order (ImageNet's n01440764, ... folders are in class order).
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageNotFoundError(f"no such folder: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    strays = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if strays:
        raise InputError(f"{strays[0]} is not inside a class folder: an image folder holds one folder per class "
                         f"({root}/<class>/<image>)")
    if not folders:
        raise InputError(f"{root} has no class folders: expected {root}/<class>/<image>, one folder per class")
    names = [f.name for f in folders]
    if classnames is None:
        classnames, index = names, dict(zip(names, range(len(names))))
    else:
        index = match_folders(root, names, classnames)
    paths, targets = [], []
    for folder in folders:
        files = images_below(folder)
        paths += files
        targets += [index[folder.name]] * len(files)
    if not paths:
        raise ImageNotFoundError(f"no image files in the class folders of {root} (looked for "
                                 f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    return LabelledImages(paths, targets, list(classnames))


def match_folders(root: Path, names: list[str], classnames: list[str]) -> dict[str, int]:
    """{folder name: class index}, by number, by name or by sorted position (see image_folder)."""
    n = len(classnames)
    if all(name.isdigit() for name in names):
        bad = [name for name in names if int(name) >= n]
        if bad:
            raise InputError(f"{root / bad[0]}: folder names are class indices, and {bad[0]} is not one of "
                             f"0..{n - 1} ({n} class names given)")
        return {name: int(name) for name in names}
    by_name = {c: i for i, c in enumerate(classnames)}
    if all(name in by_name for name in names):
        return {name: by_name[name] for name in names}
    if len(names) == n:
        return {name: i for i, name in enumerate(names)}
    odd = next(name for name in names if name not in by_name)
    raise InputError(f"{root / odd}: a class folder must be named by class index (0..{n - 1}) or class name, "
                     f"or there must be one folder per class in class order; found {len(names)} folders for "
                     f"{n} class names, and {odd!r} is not a class name")


def label_csv(path, classnames: list[str]) -> LabelledImages:
    """A CSV with a header `image,label`: image paths relative to the CSV, labels a class index or name."""
    path = Path(path)
    rows = read_csv(path, ("image", "label"))
    by_name = {}
    for i, c in enumerate(classnames):
        by_name.setdefault(c, []).append(i)
    paths, targets, seen = [], [], {}
    for line, row in rows:
        label = row["label"].strip()
        where = f"{path}, line {line}"
        if label.isdigit():
            target = int(label)
            if target >= len(classnames):
                raise InputError(f"{where}: label {target} is not a class index (0..{len(classnames) - 1})")
        elif label in by_name:
            if len(by_name[label]) > 1:
                raise InputError(f"{where}: the class name {label!r} is classes {by_name[label]}: give the index")
            target = by_name[label][0]
        else:
            raise InputError(f"{where}: label {label!r} is neither a class index nor one of the class names")
        image = image_path(path, row["image"], where)
        if image in seen:
            raise InputError(f"{where}: the image {row['image']!r} is already labelled on line {seen[image]}")
        seen[image] = line
        paths.append(image)
        targets.append(target)
    return LabelledImages(paths, targets, list(classnames))


def read_pairs(path) -> Pairs:
    """Image-caption pairs from a .csv (header image,caption) or a .jsonl file; see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such pairs file: {path}")
    if path.suffix.lower() == ".csv":
        rows = read_csv(path, ("image", "caption"))
    elif path.suffix.lower() == ".jsonl":
        rows = read_jsonl(path)
    else:
        found = path.suffix or "a file without a suffix"
        raise InputError(f"{path}: pairs are read from a .csv (header image,caption) or a .jsonl file "
                         f"({{\"image\": ..., \"caption\": ...}} a line), not {found}")
    images, captions, caption_image, index = [], [], [], {}
    for line, row in rows:
        where = f"{path}, line {line}"
        caption = row["caption"]
        if not isinstance(caption, str) or not caption.strip():
            found = "empty" if isinstance(caption, str) else f"a {type(caption).__name__}"
            raise InputError(f"{where}: the caption is {found}; expected a non-empty string")
        image = image_path(path, row["image"], where)
        if image not in index:
            index[image] = len(images)
            images.append(image)
        captions.append(caption)
        caption_image.append(index[image])
    if not captions:
        raise InputError(f"{path} has no pairs")
    return Pairs(images, captions, caption_image)


def read_csv(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict]]:
    """[(line number, row)] of a UTF-8 CSV whose header names `columns` (others are ignored)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: the header {','.join(reader.fieldnames or []) or '(none)'} lacks "
                                 f"{', '.join(missing)}; expected a first line {','.join(columns)}")
            rows = []
            for row in reader:
                empty = [c for c in columns if not (row.get(c) or "").strip()]
                if empty:
                    raise InputError(f"{path}, line {reader.line_num}: no {empty[0]} (expected {','.join(columns)})")
                rows.append((reader.line_num, row))
            return rows
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}, line {line}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or "image" not in row or "caption" not in row:
            raise InputError(f"{path}, line {line}: expected an object with \"image\" and \"caption\"")
        if not isinstance(row["image"], str):
            raise InputError(f"{path}, line {line}: \"image\" is a {type(row['image']).__name__}; expected a path")
        rows.append((line, row))
    return rows


def image_path(table: Path, name: str, where: str) -> Path:
    """An image named in a table: relative to the table's folder; it must exist."""
    image = table.parent / name.strip()
    if not image.is_file():
        raise ImageNotFoundError(f"{where}: no such image file: {image}")
    return image
