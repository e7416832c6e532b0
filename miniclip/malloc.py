"""Opt-in: ask glibc's malloc to keep the memory a forward pass frees, for the next one to reuse.

Why: a forward pass allocates and frees tensors of a few to a few tens of MB, layer after layer (ViT-B/32 at
batch 32: 5 to 20 MB each). glibc returns free memory at the top of its heap to the OS once there is more of
it than a threshold that it adjusts as it goes (twice the largest freed block so far, about 40 MB here),
and every page handed back is page-faulted in again, zeroed, the next time it is used. Whether that happens
in a given process depends on where earlier allocations happened to land: measured with `resource.getrusage`
around `encode_image` on a batch of 32 images, some processes fault 0 pages a batch, others 6,000 to 54,000
(25 to 220 MB, up to 0.2 s of system time in a 1.5 s batch). transformers' model is hit the same way.

Fixed thresholds make it deterministic: blocks up to `mmap_threshold` come from the heap, and the heap keeps
up to `trim_threshold` of free memory instead of trimming it. The cost is memory: the process keeps what a
forward pass freed (tens of MB at batch 32) rather than giving it back. glibc mmaps blocks over 32 MB
whatever the setting, so a larger model's activations escape it at batch 32: ViT-B/16's MLP activations
are 77 MB a layer there, and a batch still faulted 113,000 pages (400,000 without it). Batches whose
tokens x mlp_width x 4 bytes stay under 32 MB (13 images for ViT-B/16, 7 for ViT-L/14) fault none.

It is process-wide, so a library must not do it on import: the `miniclip` command calls it (it owns its
process), the benchmarks report it as its own row, and anyone else opts in by calling it. The same settings
work for any program without code: GLIBC_TUNABLES=glibc.malloc.trim_threshold=1073741824:glibc.malloc.mmap_threshold=33554432
"""

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MAX_INT = 2**31 - 1
MAX_MMAP_THRESHOLD = 32 << 20  # glibc refuses more on 64-bit systems: half its largest per-thread heap
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")  # glibc's own environment variables


def keep_freed_memory(trim_threshold: int = 1 << 30, mmap_threshold: int = MAX_MMAP_THRESHOLD) -> bool:
    """Fix glibc's thresholds for this process: heap memory up to `trim_threshold` bytes stays with the
    process once freed, and blocks up to `mmap_threshold` bytes come from that heap rather than from
    mmap (whose blocks go back to the OS when freed). Returns whether it changed anything: False where the C
    library is not glibc, or where the environment already sets glibc's malloc thresholds (theirs win)."""
    if not 0 <= mmap_threshold <= MAX_MMAP_THRESHOLD:
        raise ValueError(f"mmap_threshold must be between 0 and {MAX_MMAP_THRESHOLD} bytes (glibc's limit), "
                         f"got {mmap_threshold}")
    if not 0 <= trim_threshold <= MAX_INT:
        raise ValueError(f"trim_threshold must be between 0 and {MAX_INT} bytes (mallopt takes a C int), "
                         f"got {trim_threshold}")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or set_by_user():
        return False
    libc = ctypes.CDLL(None)
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) != 1 or libc.mallopt(M_TRIM_THRESHOLD, trim_threshold) != 1:
        raise OSError(f"glibc's mallopt refused mmap_threshold={mmap_threshold}, trim_threshold={trim_threshold}")
    return True


def set_by_user() -> bool:
    """Whether this process's environment already chose glibc's malloc thresholds."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return (any(name in os.environ for name in USER_SETTINGS)
            or "glibc.malloc.trim_threshold" in tunables or "glibc.malloc.mmap_threshold" in tunables)
