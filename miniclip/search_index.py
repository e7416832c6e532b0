"""A folder's image embeddings, cached in a file beside the images, so searching it again is instant.

The index is a safetensors file in the folder (one per model): the embeddings, and in its metadata each
image's path relative to the folder with its size and modification time. An image is embedded again only
if it is new or either of those changed; images that are gone are dropped.
"""

import json
import re
from pathlib import Path

import torch

INDEX_PREFIX = ".miniclip-index-"


def index_path(folder: Path, model_name: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name).strip("_")[-80:]  # one file per model
    return folder / f"{INDEX_PREFIX}{slug}.safetensors"


def stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def read_index(path: Path, model_name: str) -> dict[str, tuple[list[int], torch.Tensor]]:
    """relative path -> (stamp, embedding) from an index file; empty if there is none or it is unusable."""
    from safetensors import safe_open

    if not path.is_file():
        return {}
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            embeds = f.get_tensor("embeddings")
        entries = json.loads(meta["entries"])
        if meta.get("model") != model_name or len(entries) != len(embeds):
            return {}
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
        return {}
    return {e["path"]: (e["stamp"], embeds[i]) for i, e in enumerate(entries)}


def update_index(folder: Path, files: list[Path], model_name: str, embed_fn):
    """Returns (files, their embeddings (n, d), how many were embedded now) and rewrites the index.

    `embed_fn(list of paths) -> (n, d) tensor` is called once, with just the new or changed files.
    """
    from safetensors.torch import save_file

    path = index_path(folder, model_name)
    cached = read_index(path, model_name)
    keys = [f.relative_to(folder).as_posix() for f in files]
    stamps = [stamp(f) for f in files]
    todo = [i for i, (k, s) in enumerate(zip(keys, stamps)) if k not in cached or cached[k][0] != s]
    fresh = embed_fn([files[i] for i in todo]) if todo else None
    rows, fresh_rows = [], dict(zip(todo, range(len(todo))))
    for i, key in enumerate(keys):
        rows.append(fresh[fresh_rows[i]] if i in fresh_rows else cached[key][1])
    embeds = torch.stack(rows).float() if rows else torch.empty(0, 0)
    if todo or len(cached) != len(keys):
        entries = [{"path": k, "stamp": s} for k, s in zip(keys, stamps)]
        save_file({"embeddings": embeds.contiguous()}, path,
                  metadata={"model": model_name, "entries": json.dumps(entries)})
    return files, embeds, len(todo)
