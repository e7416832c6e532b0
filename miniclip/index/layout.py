"""The sharded layout on disk: a folder of safetensors shards and a manifest.

    photos/manifest.json              model, dtype, preprocessing, and the shards in row order
    photos/shard-00000.safetensors    "embeddings" (rows, dim) fp32 or fp16; metadata: the rows' sources
    photos/shard-00001.safetensors    ...

Row r of the collection is row r - first_row of the shard that holds it; the manifest gives each shard's
row count. A shard is written in one piece, through a temporary file and a rename (embedding_cache.atomic_save),
and records the digest of the inputs it was planned for: a file is taken as done only if its header parses,
its data is all there and the digest matches, so neither a crash nor a changed input list is mistaken for work
done.

Shards are read without safetensors' loader: its header is 8 bytes of little-endian length, that many bytes of
JSON, then the raw tensors. Reading that ourselves lets exact search map one block of rows at a time
(numpy.memmap of just that byte range), so the working set is a block, whatever the shard's size.
"""

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

MANIFEST = "manifest.json"
FORMAT = "miniclip-shards/1"
DTYPES = {"F32": np.float32, "F16": np.float16}  # what shards are written in (--shard-dtype)


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def digest(keys: list[str]) -> str:
    """Names a shard's planned inputs, so a shard left by another input list is not taken as done."""
    return hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:32]


# -----------------------------------------------------------------------------
# Shards


def write_shard(path: Path, embeds: torch.Tensor, sources: list[str], planned: list[str], skipped: list[str]) -> None:
    """One shard, atomically: the embeddings, the sources of its rows, and what could not be read."""
    from safetensors.torch import save_file

    from ..embedding_cache import atomic_save

    metadata = {"sources": json.dumps(sources), "skipped": json.dumps(skipped), "plan": digest(planned)}
    atomic_save(path, lambda tmp: save_file({"embeddings": embeds.contiguous()}, tmp, metadata=metadata))


def read_header(path: Path) -> tuple[dict, int]:
    """(the safetensors header, the byte offset where tensor data starts). Raises ValueError if malformed."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:  # the metadata holds one path per row; 100 MB is far past any shard
            raise ValueError(f"{path}: not a safetensors file (header length {n})")
        header = json.loads(f.read(n))
    return header, 8 + n


def shard_info(path: Path) -> dict | None:
    """{"rows", "dim", "dtype", "plan", "data_start", "data_end"} of a complete shard, else None."""
    try:
        header, start = read_header(path)
        tensor = header["embeddings"]
        rows, dim = tensor["shape"]
        begin, end = tensor["data_offsets"]
        if os.path.getsize(path) < start + end or tensor["dtype"] not in DTYPES:
            return None  # cut short: never taken as done
        return {"rows": rows, "dim": dim, "dtype": tensor["dtype"], "plan": header["__metadata__"]["plan"],
                "data_start": start + begin, "data_end": start + end}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_done(path: Path, planned: list[str]) -> bool:
    info = shard_info(path)
    return info is not None and info["plan"] == digest(planned)


def shard_metadata(path: Path) -> dict:
    header, _ = read_header(path)
    meta = header["__metadata__"]
    return {"sources": json.loads(meta["sources"]), "skipped": json.loads(meta["skipped"])}


# -----------------------------------------------------------------------------
# The manifest


def write_manifest(folder: Path, manifest: dict) -> None:
    from ..embedding_cache import atomic_save

    text = json.dumps(manifest, indent=1)
    atomic_save(Path(folder) / MANIFEST, lambda tmp: Path(tmp).write_text(text))


def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        from ..errors import InputError

        raise InputError(f"{path} is not a miniclip shard manifest (format {manifest.get('format')!r})")
    return manifest


# -----------------------------------------------------------------------------
# Reading a collection


class Collection:
    """The rows of a finished sharded embedding, read a block at a time."""

    def __init__(self, folder: Path):
        from ..errors import InputError

        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        if manifest is None:
            raise InputError(f"{self.folder} has no {MANIFEST}: make it with `miniclip embed ... --out {self.folder}`")
        if not manifest["complete"]:
            raise InputError(f"{self.folder} is an unfinished embedding: run the same `miniclip embed` again to "
                             "finish its missing shards")
        self.manifest = manifest
        self.shards = [self.folder / s["file"] for s in manifest["shards"]]
        self.counts = [s["rows"] for s in manifest["shards"]]
        self.first_rows = np.cumsum([0] + self.counts).tolist()
        self.rows = self.first_rows[-1]
        self.dim = manifest["dim"]
        self._sources = {}  # shard index -> its sources, read when a result needs them

    def blocks(self, block_rows: int):
        """(first row, (n, dim) float32 tensor) for consecutive blocks of at most block_rows rows.

        Each block maps only its own byte range of the shard and is unmapped before the next, so the memory
        held is about one block (plus its float32 copy), however large the shards."""
        for path, first in zip(self.shards, self.first_rows):
            info = shard_info(path)
            if info is None:
                from ..errors import InputError

                raise InputError(f"{path} is missing or damaged: run `miniclip embed` with the same inputs again")
            dtype = DTYPES[info["dtype"]]
            row_bytes = info["dim"] * np.dtype(dtype).itemsize
            for start in range(0, info["rows"], block_rows):
                n = min(block_rows, info["rows"] - start)
                mapped = np.memmap(path, dtype=dtype, mode="r", offset=info["data_start"] + start * row_bytes,
                                   shape=(n, info["dim"]))
                block = torch.from_numpy(np.array(mapped, dtype=np.float32))  # a copy; the mapping is dropped
                del mapped
                yield first + start, block

    def source(self, row: int) -> str:
        """The source (path, or tar#key) of a row."""
        import bisect

        shard = bisect.bisect_right(self.first_rows, row) - 1
        if shard not in self._sources:
            self._sources[shard] = shard_metadata(self.shards[shard])["sources"]
        return self._sources[shard][row - self.first_rows[shard]]

    def all_rows(self) -> torch.Tensor:
        """Every row as one float32 tensor (for tests and small collections)."""
        blocks = [b for _, b in self.blocks(1 << 16)]
        return torch.cat(blocks) if blocks else torch.empty(0, self.dim)

    def all_sources(self) -> list[str]:
        return [s for path in self.shards for s in shard_metadata(path)["sources"]]
