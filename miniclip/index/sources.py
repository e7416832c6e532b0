"""What to embed, as an ordered list, and how it is decoded.

Images files: the inputs become one list of image paths (folders expanded and sorted by the command line,
file lists read here), cut into shards of `shard_size` consecutive paths. WebDataset tar shards
(`data/{00000..00099}.tar`): one output shard per tar, its rows in the tar's order, each named
`<tar>#<sample key>`. Either way the plan is fixed by the inputs alone, so every torchrun rank computes the
same plan without talking to the others.

Decoding and preprocessing run in DataLoader worker processes (`ImageFiles` below): JPEG decoding and resizing
are most of the cost of embedding a photo on a GPU, and a process per core keeps them off the model's path.
Batches never cross a shard boundary, so a shard's rows are computed by the same forward passes whichever
process embeds it and however the shards are split: that is what makes a 2-process run equal a 1-process
run bit for bit.
"""

from pathlib import Path

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info


def read_file_list(path: Path) -> list[Path]:
    """A file list: one image path per line (blank lines and lines starting with # skipped); relative paths
    are relative to the list's own folder, so a list travels with its images."""
    from ..errors import ImageNotFoundError

    path = Path(path)
    paths = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            item = Path(line)
            paths.append(item if item.is_absolute() else path.parent / item)
    if not paths:
        raise ImageNotFoundError(f"the file list {path} names no images")
    return paths


def plan_shards(paths: list, shard_size: int) -> list[list[str]]:
    """[[source, ...] for each shard]: consecutive runs of shard_size paths, the last one shorter."""
    keys = [str(p) for p in paths]
    return [keys[i:i + shard_size] for i in range(0, len(keys), shard_size)]


def shard_batches(shards: dict[int, list[str]], batch_size: int) -> list[list[tuple[int, int]]]:
    """Batches of (shard, position) pairs, each inside one shard: the order in which they are embedded."""
    batches = []
    for shard, keys in shards.items():
        for start in range(0, len(keys), batch_size):
            batches.append([(shard, i) for i in range(start, min(start + batch_size, len(keys)))])
    return batches


# Every dataset below yields the same batches: (shard, [keys of the rows read], pixels (n, 3, H, W) or None,
# [(key, why it could not be read), ...], whether this is the shard's last batch). Unreadable images are
# reported, not raised: the main process decides whether that stops the run (an exception raised in a worker
# would come back wrapped in DataLoader's text).


class ImageFiles(Dataset):
    """(shard, position) -> that image file's pixels, or the reason it could not be read."""

    def __init__(self, shards: dict[int, list[str]], preprocess):
        self.shards = shards
        self.preprocess = preprocess

    def __len__(self):  # DataLoader asks; the batch sampler gives the real order
        return sum(map(len, self.shards.values()))

    def __getitem__(self, item):
        shard, i = item
        keys = self.shards[shard]
        return shard, keys[i], *read_image(self.preprocess, keys[i]), i == len(keys) - 1


def read_image(preprocess, image) -> tuple:
    """(pixels, None), or (None, a one-line reason) for a file or PIL image."""
    from ..errors import ImageError

    try:
        return preprocess(image), None
    except (ImageError, OSError) as e:
        return None, " ".join(str(e).split())


def collate(items):
    """ImageFiles items of one batch -> the batch (see above)."""
    kept = [(key, pixels) for _, key, pixels, error, _ in items if error is None]
    errors = [(key, error) for _, key, _, error, _ in items if error is not None]
    pixels = torch.stack([p for _, p in kept]) if kept else None
    return items[0][0], [key for key, _ in kept], pixels, errors, items[-1][4]


# -----------------------------------------------------------------------------
# WebDataset tar shards (pip install "miniclip[webdataset]")

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")


def is_tar_pattern(item: str) -> bool:
    return ".tar" in Path(str(item)).name


def expand_tars(patterns: list[str]) -> list[Path]:
    """`data/{000..009}.tar` -> the tar files, in the pattern's order (brace expansion as WebDataset does it)."""
    from ..errors import ImageNotFoundError, require

    braceexpand = require("braceexpand", "webdataset", "reading WebDataset tar shards").braceexpand
    tars = [Path(t) for pattern in patterns for t in braceexpand(str(pattern))]
    for tar in tars:
        if not tar.is_file():
            raise ImageNotFoundError(f"no such tar shard: {tar}")
    return tars


def tar_identity(tar: Path) -> list[str]:
    """What a tar shard's output is planned from: the file itself (path, size, mtime); its keys are only
    known once it has been read."""
    st = tar.stat()
    return [f"{tar.resolve()}:{st.st_size}:{st.st_mtime_ns}"]


class TarShards(IterableDataset):
    """Each DataLoader worker reads whole tars (the i-th of this process's tars goes to worker i mod workers),
    in order, and yields their batches; a batch never spans two tars."""

    def __init__(self, tars: dict[int, Path], preprocess, batch_size: int):
        self.tars, self.preprocess, self.batch_size = tars, preprocess, batch_size

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for j, (shard, tar) in enumerate(self.tars.items()):
            if j % workers == worker:
                yield from self.batches(shard, tar)

    def batches(self, shard: int, tar: Path):
        from ..errors import require

        wds = require("webdataset", "webdataset", "reading WebDataset tar shards")
        samples, held = [], None
        for sample in wds.tariterators.tarfile_samples([{"url": str(tar)}]):
            samples.append(sample)
            if len(samples) == self.batch_size:
                if held is not None:
                    yield held
                held, samples = self.decode(shard, tar, samples, last=False), []
        if samples or held is None:
            if held is not None:
                yield held
            held = self.decode(shard, tar, samples, last=True)
        yield (*held[:4], True)

    def decode(self, shard, tar, samples, last):
        import io

        from PIL import Image

        keys, rows, errors = [], [], []
        for sample in samples:
            key = f"{tar}#{sample['__key__']}"
            data = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
            if data is None:
                errors.append((key, f"no image in the sample (looked for .{', .'.join(IMAGE_EXTENSIONS)})"))
                continue
            try:
                image = Image.open(io.BytesIO(data))
            except OSError as e:
                errors.append((key, " ".join(str(e).split())))
                continue
            pixels, error = read_image(self.preprocess, image)
            if error is None:
                keys.append(key)
                rows.append(pixels)
            else:
                errors.append((key, error))
        return shard, keys, torch.stack(rows) if rows else None, errors, last
