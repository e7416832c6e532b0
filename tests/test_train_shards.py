"""Streamed WebDataset shards (miniclip/train/shards.py), without a model: which samples make each batch.

- the batches depend on the shards, seed, streams and global batch only: 1 process or 2 ranks, 0, 1 or 2
  DataLoader workers, the same samples at every step;
- with no shuffle buffer, an epoch reads every sample exactly once;
- resuming at step t gives the batches an uninterrupted run gives from t, and passing over the first t steps
  reads no file's bytes;
- unusable samples (no caption, an empty one, no image, a corrupt image) are left out with the reason;
- the shuffle buffer keeps every sample, once; wrong stream counts and compressed tars are refused by name.
"""

import io
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from miniclip.errors import InputError
from miniclip.train import shards
from miniclip.train.command import join_workers
from miniclip.train.shards import StreamedPairs, generator, shuffled, tar_samples


def png(value: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (value, 0, 0)).save(out, format="PNG")
    return out.getvalue()


def add(tar, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, n_shards: int, per_shard: int) -> list[Path]:
    """Shards of samples `s{shard}_{i}`: a 4x4 PNG and the caption "s{shard}_{i}" (what the tests compare)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(n_shards):
        paths.append(folder / f"{s:03d}.tar")
        with tarfile.open(paths[-1], "w") as tar:
            for i in range(per_shard):
                add(tar, f"s{s}_{i}.png", png(i))
                add(tar, f"s{s}_{i}.txt", f"s{s}_{i}".encode())
    return paths


def label(image, *key):
    """A transform that keeps nothing of the image: the tests look at the captions."""
    return torch.zeros(1)


def steps(tars, streams=4, batch=8, world=1, workers=0, start=0, stop=9, buffer=5, seed=0) -> list[list[str]]:
    """Each step's captions, every rank's share, as a list per step (sorted: ranks concatenate in rank order,
    which is not the order of one process's streams)."""
    per_rank = []
    for rank in range(world):
        pairs = StreamedPairs(tars, streams, batch, label, seed=seed, shuffle_buffer=buffer, start=start,
                              stop=stop, rank=rank, world_size=world, workers=workers)
        loader = torch.utils.data.DataLoader(pairs, batch_size=None, collate_fn=lambda x: x, num_workers=workers)
        per_rank.append([captions for _, captions, _ in join_workers(loader, max(workers, 1))])
    return [sorted(c for rank in per_rank for c in rank[t]) for t in range(stop - start)]


@pytest.fixture(scope="module")
def tars(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"), n_shards=6, per_shard=5)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
def test_batches_do_not_depend_on_processes_or_workers(tars):
    one = steps(tars)
    assert all(len(batch) == 8 for batch in one)
    for world, workers in ((2, 0), (1, 2), (2, 2), (4, 0), (1, 4)):
        assert steps(tars, world=world, workers=workers) == one, (world, workers)
    assert steps(tars, seed=1) != one  # the seed matters
    assert steps(tars, streams=2) != one  # and so does the number of streams


def test_an_epoch_without_shuffle_buffer_reads_every_sample_once(tars):
    """6 shards of 5 over 2 streams: 15 samples a stream an epoch, a chunk of 3 a step, 5 steps an epoch."""
    epoch = [c for batch in steps(tars, streams=2, batch=6, buffer=0, stop=5) for c in batch]
    assert sorted(epoch) == sorted(f"s{s}_{i}" for s in range(6) for i in range(5))
    # within a shard the samples keep their order: the stream reads it front to back
    for s in range(6):
        mine = [c for batch in steps(tars, streams=1, batch=5, buffer=0, stop=6) for c in batch
                if c.startswith(f"s{s}_")]
        assert mine == [f"s{s}_{i}" for i in range(5)]


def test_resuming_at_a_step_continues_the_same_batches_reading_no_bytes(tars, monkeypatch):
    whole = steps(tars, stop=12)
    reads = []
    read = shards.OpenTars.read
    monkeypatch.setattr(shards.OpenTars, "read", lambda self, sample, ext: reads.append(sample.key) or
                        read(self, sample, ext))
    assert steps(tars, start=7, stop=12) == whole[7:]
    assert len(reads) == 2 * 8 * 5  # a caption and an image for each sample of the 5 steps run, none skipped
    assert steps(tars, start=11, stop=12, workers=2) == whole[11:]  # each worker passes over its own streams


def test_unusable_samples_are_left_out_with_the_reason(tmp_path):
    tar_path = tmp_path / "000.tar"
    with tarfile.open(tar_path, "w") as tar:
        add(tar, "good.png", png(1))
        add(tar, "good.txt", b"a good one")
        add(tar, "nocaption.png", png(2))
        add(tar, "empty.png", png(3))
        add(tar, "empty.txt", b"  \n")
        add(tar, "noimage.txt", b"words only")
        add(tar, "corrupt.png", b"this is not a png")
        add(tar, "corrupt.txt", b"a corrupt picture")
        add(tar, "dir/also.good.png", png(4))  # key dir/also, extension good.png: WebDataset's rule
        add(tar, "dir/also.txt", b"in a folder")
    found = [s.key for s in tar_samples(tar_path)]
    assert found == ["good", "nocaption", "empty", "noimage", "corrupt", "dir/also"]

    pairs = StreamedPairs([tar_path], 1, 6, lambda image, *key: torch.tensor(image.getpixel((0, 0))),
                          shuffle_buffer=0, stop=1)
    [(step, pixels, captions, errors)] = list(pairs)
    assert step == 0 and captions == ["a good one"]
    assert pixels.tolist() == [[1, 0, 0]]
    assert [e.split(" (")[0] for e in errors] == [f"{tar_path}#{k}" for k in
                                                 ("nocaption", "empty", "noimage", "corrupt", "dir/also")]
    assert "no caption" in errors[0] and "no caption" in errors[1] and "no image" in errors[2]
    assert "cannot identify image file" in errors[3]
    assert "no image" in errors[4]  # "good.png" is not an image extension


def test_the_shuffle_buffer_keeps_every_sample_once():
    items = list(range(100))
    out = list(shuffled(items, 10, generator(0)))
    assert len(out) == 90 and len(set(out)) == 90 and set(out) <= set(items)  # 10 stay in the buffer
    assert out != items[:90]
    assert out == list(shuffled(items, 10, generator(0)))
    assert list(shuffled(items, 0, generator(0))) == items
    # a sample can leave the buffer no earlier than it entered: output i is one of the first i + 11 inputs
    assert all(x <= i + 10 for i, x in enumerate(out))


def test_stream_counts_that_do_not_fit_are_refused_by_name(tars):
    with pytest.raises(InputError, match="--streams 3 cannot be shared by 2 processes x 1 DataLoader workers"):
        StreamedPairs(tars, 3, 6, label, world_size=2)
    with pytest.raises(InputError, match="global batch of 10 .* not a multiple of --streams 4"):
        StreamedPairs(tars, 4, 10, label)
    with pytest.raises(InputError, match="6 shards for 8 streams"):
        StreamedPairs(tars, 8, 8, label)


def test_a_compressed_tar_is_refused(tmp_path):
    path = tmp_path / "000.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        add(tar, "a.txt", b"x")
    with pytest.raises(InputError, match="000.tar.gz: not an uncompressed tar shard"):
        list(tar_samples(path))


def test_shards_without_samples_stop_with_an_error(tmp_path):
    path = tmp_path / "000.tar"
    with tarfile.open(path, "w") as tar:
        add(tar, "README", b"no samples here")
    with pytest.raises(InputError, match="hold no samples"):
        list(StreamedPairs([path], 1, 1, label, stop=1))
