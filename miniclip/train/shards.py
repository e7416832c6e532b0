"""WebDataset shards, streamed: training data of any size, each shard read front to back, split among ranks
and DataLoader workers.

A table or a folder of pairs is indexed up front and shuffled whole (datasets.py). Tar shards are not: a set
the size of LAION or DataComp has billions of samples in tens of thousands of shards, too many to list before
the first step or to read in random order. Instead:

- the shards are dealt to S *streams* (`--streams`, by default processes x DataLoader workers). In epoch e,
  stream k reads the shards at positions k, k+S, k+2S, ... of a shuffle of the shard list seeded by
  (seed, e), whole and in order, then goes on to its shards of epoch e+1. Each stream passes its samples
  through a shuffle buffer of its own (seeded by (seed, k)), as WebDataset's `.shuffle(n)` does, because the
  samples of one shard were usually written side by side (one web page, one source);
- step t's global batch is the t-th chunk of G/S samples of every stream. Rank r reads streams r, r+W, ...,
  and each of its DataLoader workers some of those, so the batches are a function of the shards, the seed,
  S and the global batch G alone: one process and eight under torchrun see the same batches for the same S;
- resuming at step t, every stream first passes over its first t chunks. Iterating a tar with Python's
  tarfile reads header after header and seeks over the files' contents, so this reads no image; a sample's
  bytes are read, by their offset in the tar, only when its batch is decoded.

A sample is what WebDataset makes of a tar: consecutive files sharing a key (the path up to the file name's
first dot), `0001.jpg` + `0001.txt`. One without an image or caption, or whose image cannot be decoded, is
left out of its batch and reported (`StreamedPairs` items carry the reasons), never stopping the run.
"""

import hashlib
import io
import itertools
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import InputError
from ..index.sources import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Sample:
    tar: Path
    key: str
    members: dict  # extension ("jpg", "txt", ...) -> (offset, size) of the file's bytes in the tar

    @property
    def name(self) -> str:
        return f"{self.tar}#{self.key}"


def generator(*parts) -> torch.Generator:
    """A torch.Generator seeded by a tuple, ('buffer', 0, 3) -> its own stream of numbers. A hash, not a sum:
    seed + k would make stream 1 of seed 0 the same as stream 0 of seed 1."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def tar_samples(tar: Path):
    """The samples of one shard, in order, as (offset, size) of their files: no file's bytes are read."""
    key, members = None, {}
    try:
        f = tarfile.open(tar, "r:")  # uncompressed only: the offsets must be the file's own
    except tarfile.ReadError as e:
        raise InputError(f"{tar}: not an uncompressed tar shard ({e})") from None
    with f:
        for member in f:  # one header at a time; the contents are skipped by seeking
            name = member.name.rpartition("/")[2]
            if not member.isfile() or "." not in name:
                continue
            stem, ext = split_key(member.name)
            if stem != key and members:
                yield Sample(tar, key, members)
                members = {}
            key, members[ext] = stem, (member.offset_data, member.size)
    if members:
        yield Sample(tar, key, members)


def split_key(member: str) -> tuple[str, str]:
    """'shard/0001.jpg' -> ('shard/0001', 'jpg'); 'a.b.jpg' -> ('a', 'b.jpg'), as WebDataset splits it."""
    folder, _, file = member.rpartition("/")
    stem, _, ext = file.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def stream(shards: list[Path], k: int, streams: int, seed: int):
    """Stream k's samples, epoch after epoch, without end."""
    for epoch in itertools.count():
        order = torch.randperm(len(shards), generator=generator(seed, "shards", epoch)).tolist()
        mine = [shards[i] for i in order[k::streams]]
        count = 0
        for tar in mine:
            for sample in tar_samples(tar):
                count += 1
                yield sample
        if count == 0:  # else the loop would read these shards forever
            raise InputError(f"stream {k} of {streams}: its shards of epoch {epoch} hold no samples "
                             f"({', '.join(map(str, mine))})")


def shuffled(samples, size: int, g: torch.Generator):
    """A shuffle buffer of `size`: each sample read replaces a random one of the buffer, which is yielded.
    The input never ends (stream()), so the buffer is never drained. size 0: the input's order."""
    buffer = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        if size:
            j = int(torch.randint(size, (1,), generator=g))
            buffer[j], sample = sample, buffer[j]
        yield sample


def chunks(samples, n: int):
    samples = iter(samples)
    while True:
        yield [next(samples) for _ in range(n)]


class StreamedPairs(IterableDataset):
    """Yields, in each DataLoader worker (or the main process with no workers), one item per step:
    (step, pixels (n, 3, H, W) or None, captions, ["sample (why it was left out)"]), the step's chunks of this
    worker's streams, in stream order. A rank's batch is the items of its workers at that step, in worker
    order, which is the order a DataLoader returns them in (it takes from its workers in turn).

    transform(image, *key) -> pixels: the preprocessing, given a key unique to the sample's place in the run
    (step, stream, position) for a random augmentation to seed itself from. Steps start..stop-1 (stop None:
    without end); workers: the DataLoader's, for checking that the streams divide among them.
    """

    def __init__(self, shards: list[Path], streams: int, global_batch: int, transform, seed: int = 0,
                 shuffle_buffer: int = 1000, start: int = 0, stop: int | None = None, rank: int = 0,
                 world_size: int = 1, workers: int = 0):
        check_streams(len(shards), streams, global_batch, world_size, workers)
        self.shards, self.streams, self.chunk = shards, streams, global_batch // streams
        self.transform, self.seed, self.shuffle_buffer = transform, seed, shuffle_buffer
        self.start, self.stop, self.rank, self.world_size = start, stop, rank, world_size

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        mine = list(range(self.rank, self.streams, self.world_size))[worker::workers]
        sources = {k: chunks(shuffled(stream(self.shards, k, self.streams, self.seed), self.shuffle_buffer,
                                      generator(self.seed, "buffer", k)), self.chunk) for k in mine}
        for _ in range(self.start):  # resuming: pass over the chunks of the steps done, reading headers only
            for source in sources.values():
                next(source)
        files = OpenTars()
        try:
            for step in range(self.start, self.stop) if self.stop is not None else itertools.count(self.start):
                pixels, captions, errors = [], [], []
                for k, source in sources.items():
                    for position, sample in enumerate(next(source)):
                        image, caption, error = self.read(files, sample, (step, k, position))
                        if error is None:
                            pixels.append(image)
                            captions.append(caption)
                        else:
                            errors.append(f"{sample.name} ({error})")
                yield step, torch.stack(pixels) if pixels else None, captions, errors
        finally:
            files.close()

    def read(self, files, sample: Sample, key: tuple):
        """One sample -> (pixels, caption, None), or (None, None, why it cannot be used)."""
        from PIL import Image

        image = next((e for e in IMAGE_EXTENSIONS if e in sample.members), None)
        if image is None:
            return None, None, f"no image: no .{', .'.join(IMAGE_EXTENSIONS)} file"
        caption = files.read(sample, "txt").decode("utf-8", errors="replace").strip() \
            if "txt" in sample.members else ""
        if not caption:
            return None, None, "no caption: no .txt file or an empty one"
        try:
            return self.transform(Image.open(io.BytesIO(files.read(sample, image))), *key), caption, None
        except (ValueError, OSError) as e:  # Pillow's "cannot identify image file"; miniclip's ImageError
            return None, None, " ".join(str(e).split())


class OpenTars:
    """Reads a sample's files by offset; the few tars in use stay open (a shuffle buffer spans one or two)."""

    def __init__(self, keep: int = 8):
        self.files, self.keep = {}, keep

    def read(self, sample: Sample, ext: str) -> bytes:
        f = self.files.pop(sample.tar, None) or open(sample.tar, "rb")  # noqa: SIM115 - kept open
        self.files[sample.tar] = f  # most recently used last
        while len(self.files) > self.keep:
            self.files.pop(next(iter(self.files))).close()
        offset, size = sample.members[ext]
        f.seek(offset)
        return f.read(size)

    def close(self):
        for f in self.files.values():
            f.close()
        self.files.clear()


def check_streams(shards: int, streams: int, global_batch: int, world_size: int, workers: int) -> None:
    """Every stream needs a shard; every rank and worker as many streams as the others; every stream an equal
    share of the global batch. The messages name the flags to change."""
    readers = world_size * max(workers, 1)
    if streams % readers:
        raise InputError(f"--streams {streams} cannot be shared by {world_size} processes x {max(workers, 1)} "
                         f"DataLoader workers: give a multiple of {readers}")
    if global_batch % streams:
        raise InputError(f"the global batch of {global_batch} (--batch-size x {world_size} processes) is not a "
                         f"multiple of --streams {streams}: each stream gives an equal share of every batch")
    if shards < streams:
        raise InputError(f"{shards} shards for {streams} streams: each stream reads whole shards, so give at "
                         f"least {streams} shards or fewer --streams (and --workers)")
