"""Reading tensors from a weights file, safely.

- `.safetensors` is read with `safetensors`, memory-mapped: tensors are views of the file's pages, so
  assigning them to a model built on the `meta` device never holds a second copy of the weights.
- `.bin`/`.pt`/`.pth` (PyTorch pickles) are read only with `torch.load(weights_only=True)`, which
  refuses to build any object but tensors and plain containers: a checkpoint can never run code.

Any failure names the file, what went wrong and the fix.
"""

import ctypes
import os
import re
import sys
import zipfile
from pathlib import Path

import torch

from miniclip.errors import CheckpointError, CheckpointNotFoundError

SAFETENSORS_SUFFIXES = {".safetensors"}
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt"}
REDOWNLOAD_HINT = (
    "If it came from the Hugging Face cache, delete that file or load again with force_download=True; "
    "otherwise re-download or re-save it."
)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"no weights file at {path}")
    if path.suffix in SAFETENSORS_SUFFIXES or is_safetensors(path):
        return read_safetensors(path)
    return read_pickle(path)


def is_safetensors(path: Path) -> bool:
    # A safetensors file opens with an 8-byte little-endian header length and then a JSON object; this lets a
    # file named without the suffix be recognised. A PyTorch zip archive starts with "PK" instead.
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}). {REDOWNLOAD_HINT}") from e


def read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        # mmap=True maps the archive's storages instead of reading them into memory. Only the zip format
        # (torch.save's default since 1.6) can be mapped; a legacy file (_use_new_zipfile_serialization=False)
        # is read whole, by the same weights_only unpickler.
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # noqa: BLE001 - torch.load raises many types; every one means "not a checkpoint"
        raise CheckpointError(pickle_failure(path, e)) from e
    return checked_state_dict(sd, path)


# What torch's weights_only unpickler says when a pickle asks for an object it refuses (a global, a class, a
# call); its other failures ("Unsupported operand", truncated data) mean the bytes are no pickle at all.
REFUSED_OBJECT = re.compile(r"Unsupported global|is blocked|unrecognized function|Can only create new object")


def pickle_failure(path: Path, e: Exception) -> str:
    # torch wraps its unpickler's own words ("Unsupported operand 0") in advice to retry with weights_only=False
    # or to allowlist the global, which miniclip never does: keep only those words.
    detail = str(e).split("WeightsUnpickler error:", 1)[-1].strip()
    text = detail.splitlines()[0].split(". Please use", 1)[0] if detail else type(e).__name__
    if REFUSED_OBJECT.search(str(e)):
        return (f"{path} holds pickled objects other than tensors, which miniclip refuses to unpickle (it could "
                f"run code): {text}. Convert the checkpoint to a plain state dict or to safetensors.")
    return f"{path} is neither a safetensors file nor a readable PyTorch state dict ({text}). {REDOWNLOAD_HINT}"


def checked_state_dict(sd, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]  # training checkpoints often nest the weights one level down
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise CheckpointError(f"{path} does not hold a state dict (a dict of names to tensors); found {type(sd).__name__}")
    return sd


# -----------------------------------------------------------------------------
# Memory: what a memory-mapped file costs


def release_pages(tensors) -> None:
    """Tells the kernel these memory-mapped tensors will not be read again, so their pages leave the process.

    Tensors from a safetensors file are views of its pages; a page counts in the process's memory once it
    has been read. q, k and v are read once, to be concatenated into the fused `qkv` (a new tensor), and
    would otherwise stay counted: about 120 MB for ViT-B/32. MADV_PAGEOUT reclaims them at once and never
    loses data: clean file pages are read again from the file if ever touched (and anonymous memory would be
    swapped out, not zeroed). Linux 5.4+ only; elsewhere, or where it is refused, nothing happens.
    """
    madvise = _libc_madvise()
    if madvise is None:
        return
    page = os.sysconf("SC_PAGE_SIZE")
    for t in tensors:
        start = t.data_ptr()
        end = start + t.numel() * t.element_size()
        first, last = -(-start // page) * page, end // page * page  # only pages wholly inside the tensor
        if last > first:
            madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), MADV_PAGEOUT)


MADV_PAGEOUT = 21  # <sys/mman.h>, Linux 5.4+: reclaim now; never loses data (anonymous pages would be swapped)


def _libc_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.madvise
    except (OSError, AttributeError):
        return None
