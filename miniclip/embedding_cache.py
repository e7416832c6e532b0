"""The embedding cache: image embeddings kept between runs, so a folder embedded again costs only its new files.

What an embedding depends on is the key, and nothing else is trusted:
- the model: the real path, size and mtime_ns of its weights and config files (so `ckpt`, `ckpt/` and
  `../x/ckpt` are one model, and a weights file rewritten in place, e.g. by fine-tuning, is another),
  the dtype, the device type, the preprocessing settings and miniclip's version. Their hash names the
  folder the model's embeddings live in: <cache dir>/embeddings/<hash>/.
- the image: its real path, and its identity as git's index records a file: size, mtime_ns, ctime_ns and
  inode. Restoring a file's mtime (touch -d, cp -p, rsync -t) cannot restore its ctime, so an image replaced
  in place is always embedded again.

The folder holds shards: safetensors files of embeddings with their images' keys in the metadata. Each
save writes what was computed since the last one into a new shard, through a temporary file and a
rename, so a crash or Ctrl-C never leaves a half-written shard, and work saved is never lost. Reading
merges the shards in the order they were written (a later one wins). Past MAX_SHARDS they are compacted
into one, dropping images that no longer exist.
"""

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import torch

MAX_SHARDS = 16
SAVE_EVERY_IMAGES = 1024  # a long run also saves every this many new embeddings (and every SAVE_EVERY_SECONDS)
SAVE_EVERY_SECONDS = 60


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/miniclip, else ~/.cache/miniclip: the user's cache, never the photo folder."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "miniclip"


def file_identity(path: Path) -> list:
    """[real path, size, mtime_ns] of a checkpoint file."""
    real = Path(path).resolve()
    st = real.stat()
    return [str(real), st.st_size, st.st_mtime_ns]


def image_identity(path: Path) -> tuple[str, list[int]]:
    """(real path, [size, mtime_ns, ctime_ns, inode]): what git's index uses to tell a file has changed."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return real, [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def model_key(checkpoint_files, model, preprocess) -> dict:
    """Everything besides the image that determines an image embedding, as a JSON-able dict."""
    from importlib.metadata import version

    return {
        "weights": file_identity(checkpoint_files.weights),
        "config": file_identity(checkpoint_files.config) if checkpoint_files.config else None,
        "dtype": str(model.dtype), "device": model.device.type,
        "preprocess": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(preprocess).items()},
        "miniclip": version("miniclip"),
    }


class EmbeddingCache:
    """Cached embeddings of one model: `get` before embedding, `put` after, `save` to make them last."""

    def __init__(self, root: Path, key: dict):
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        self.folder = Path(root) / "embeddings" / digest
        self.key = key
        self.entries = {}  # real path -> (identity, embedding)
        self.pending = {}  # the same, computed since the last save
        self.identities = {}  # real path -> identity when it was looked up (before its pixels were read)
        self.n_shards = 0
        self.last_save = time.monotonic()

    def open(self) -> "EmbeddingCache":
        """Create the folder (failing with the reason if it cannot be written) and read its shards."""
        from .errors import InputError

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "model.json").write_text(json.dumps(self.key, indent=1))  # for whoever looks inside
        except OSError as e:
            raise InputError(f"cannot write the embedding cache at {self.folder} ({e.strerror or e}): "
                             "pass --cache-dir with a writable folder, or --no-cache") from None
        shards = self.shards()
        for shard in shards:
            self.entries.update(read_shard(shard))
        self.n_shards = len(shards)
        return self

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.safetensors"))  # names start with the time written

    def get(self, path) -> torch.Tensor | None:
        """The cached embedding of the image file `path`, if the file is unchanged since it was made."""
        real, identity = image_identity(path)
        self.identities[real] = identity
        entry = self.entries.get(real)
        return entry[1] if entry is not None and entry[0] == identity else None

    def put(self, path, embedding: torch.Tensor) -> None:
        real = os.path.realpath(path)
        self.pending[real] = (self.identities.get(real) or image_identity(real)[1], embedding.float().cpu())

    def save_if_due(self) -> None:
        due = time.monotonic() - self.last_save > SAVE_EVERY_SECONDS
        if len(self.pending) >= SAVE_EVERY_IMAGES or (due and self.pending):
            self.save()

    def save(self) -> int:
        """Write the pending embeddings as a new shard; returns how many were written."""
        n = len(self.pending)
        if n:
            write_shard(self.folder / f"shard-{time.time_ns():020d}-{os.getpid()}.safetensors", self.pending)
            self.entries.update(self.pending)
            self.pending = {}
            self.n_shards += 1
        self.last_save = time.monotonic()
        return n

    def compact(self) -> None:
        """Past MAX_SHARDS shards, rewrite them as one (images that no longer exist are dropped)."""
        self.save()
        if self.n_shards <= MAX_SHARDS:
            return
        old = self.shards()
        live = {path: entry for path, entry in self.entries.items() if os.path.exists(path)}
        write_shard(self.folder / f"shard-{time.time_ns():020d}-{os.getpid()}.safetensors", live)
        for shard in old:  # the new shard is written first: a crash in between only leaves duplicates
            shard.unlink(missing_ok=True)
        self.n_shards = 1


def write_shard(path: Path, entries: dict) -> None:
    """entries {real path: (identity, embedding)} -> a safetensors file, atomically."""
    from safetensors.torch import save_file

    paths = list(entries)
    embeds = torch.stack([entries[p][1] for p in paths])
    metadata = {"entries": json.dumps([[p, entries[p][0]] for p in paths])}
    atomic_save(path, lambda tmp: save_file({"embeddings": embeds.contiguous()}, tmp, metadata=metadata))


def read_shard(path: Path) -> dict:
    """{real path: (identity, embedding)} from a shard; empty if it is unreadable (a cache is never trusted
    beyond what it can prove: a damaged shard only costs re-embedding)."""
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            entries = json.loads((f.metadata() or {})["entries"])
            embeds = f.get_tensor("embeddings")
        if len(entries) != len(embeds):
            return {}
        return {p: (identity, embeds[i]) for i, (p, identity) in enumerate(entries)}
    except Exception:  # noqa: BLE001
        return {}


def atomic_save(path: Path, write) -> None:
    """`write(temporary path)`, then rename it to `path`: readers see the old file or the new one, never half.

    The file gets the permissions the user's umask gives a new file (safetensors writes 0600 files).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def current_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it; put it straight back
    os.umask(mask)
    return mask
