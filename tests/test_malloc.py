"""miniclip.keep_freed_memory: glibc keeps freed memory for reuse instead of page-faulting it back in.

Each check runs in its own Python process: the setting is process-wide, and the test process must keep
glibc's defaults (as the control case needs them)."""

import json
import os
import platform
import subprocess
import sys

import pytest
import torch
from compare import assert_close

from miniclip.malloc import MAX_MMAP_THRESHOLD, keep_freed_memory

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="mallopt's thresholds are glibc's")

# What a transformer layer does to the heap, reduced to its shape: three 16 MB blocks alive at once, written,
# then freed, round after round. By glibc's defaults the first round's blocks are mmap'd and unmapped when
# freed, which raises the mmap threshold to 16 MB and the trim threshold to twice that; later rounds come
# from the heap, leave 48 MB free at its top, and it is trimmed, so every round faults its pages in again.
# Raw malloc/free through ctypes: nothing else allocates in between, so glibc's behaviour is deterministic.
RAW_ROUNDS = r"""
import ctypes, json, resource, sys
from miniclip.malloc import keep_freed_memory
changed = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_size_t,), (ctypes.c_void_p,)
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(16 << 20) for _ in range(3)]
    for block in blocks:
        ctypes.memset(block, 1, 16 << 20)
    for block in blocks:
        libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"changed": changed, "faults": faults}))
"""

# The same with torch tensors, as a model makes them, read through glibc's own accounting (mallinfo2) rather
# than page faults. Small allocations (tensor objects) land between the blocks and torch's aligned requests
# fit freed blocks less snugly, so how many rounds pass before the heap's holes are reused depends on layout
# (measured: 4 rounds here, never within 8 on a CI machine). What keep_freed_memory() promises does not
# depend on layout: no block comes from mmap, and the heap never hands memory back.
TENSOR_ROUNDS = r"""
import ctypes, json, sys
import torch
from miniclip.malloc import keep_freed_memory
class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2 (glibc 2.33+): every field a size_t
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
changed = keep_freed_memory() if sys.argv[1] == "keep" else None
rounds = []
for _ in range(8):
    tensors = [torch.ones(4 << 20) for _ in range(3)]  # 3 x 16 MB, every page written
    mmapped = libc.mallinfo2().hblkhd  # bytes in mmap'd blocks while the tensors are alive
    del tensors
    after = libc.mallinfo2()
    rounds.append({"mmapped": mmapped, "heap": after.arena, "free_in_heap": after.fordblks})
print(json.dumps({"changed": changed, "rounds": rounds}))
"""

PAGES = 3 * (16 << 20) // os.sysconf("SC_PAGE_SIZE")  # what a round writes


def rounds(script: str, mode: str, *args, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", script, mode, *map(str, args)], capture_output=True, text=True,
                         check=True, env={**os.environ, **env}, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_freed_memory_is_kept_and_reused():
    kept = rounds(RAW_ROUNDS, "keep")
    assert kept["changed"] is True
    assert kept["faults"][0] > PAGES * 9 // 10  # the first round writes fresh memory...
    assert all(f < PAGES // 100 for f in kept["faults"][1:]), kept  # ...later rounds reuse it
    default = rounds(RAW_ROUNDS, "default")  # the control: glibc's defaults fault every round in again
    assert all(f > PAGES * 9 // 10 for f in default["faults"]), default


@glibc
def test_freed_tensors_stay_in_the_heap():
    kept = rounds(TENSOR_ROUNDS, "keep")
    assert kept["changed"] is True
    heap = [r["heap"] for r in kept["rounds"]]
    assert all(r["mmapped"] < 16 << 20 for r in kept["rounds"]), kept  # the 16 MB blocks came from the heap
    assert heap == sorted(heap), kept  # the heap never shrank: nothing freed went back to the OS
    assert all(r["free_in_heap"] >= 48 << 20 for r in kept["rounds"]), kept  # what a round freed is kept
    default = rounds(TENSOR_ROUNDS, "default")  # the control: glibc's defaults mmap the first round's blocks
    assert default["rounds"][0]["mmapped"] >= 48 << 20, default


@glibc
@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "0"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}])
def test_the_environments_settings_win(env):
    # the user chose thresholds (here: trim everything, or mmap anything over 128 KB): they are left alone
    result = rounds(RAW_ROUNDS, "keep", **env)
    assert result["changed"] is False
    assert all(f > PAGES * 9 // 10 for f in result["faults"]), result


@glibc
def test_the_command_keeps_freed_memory(tiny_dir):
    # the `miniclip` command's model loading, then the raw rounds in the same process
    script = RAW_ROUNDS.replace("changed = keep_freed_memory() if sys.argv[1] == \"keep\" else None", """
import argparse
from miniclip import cli
cli.load_model(argparse.Namespace(model=sys.argv[2], device="cpu", dtype="float32"))
changed = None""")
    assert script != RAW_ROUNDS
    result = rounds(script, "command", tiny_dir)
    assert all(f < PAGES // 100 for f in result["faults"][1:]), result


def test_the_opt_in_keeps_the_models_outputs(b32_dir, b32_ref, tmp_path):
    # It changes where memory comes from, never the arithmetic: a process that opted in computes the same
    # embeddings as transformers, to the parity tests' tolerances (embeddings atol=rtol=1e-5), with the
    # model as miniclip.load gives it (the in-place activation reuses the memory most).
    script = r"""
import sys, torch, miniclip
miniclip.keep_freed_memory()
model, _ = miniclip.load(sys.argv[1])
pixels, ids = torch.load(sys.argv[2])
with torch.no_grad():
    for _ in range(3):  # later passes run on reused memory
        out = model.encode_image(pixels), model.encode_text(ids)
torch.save(out, sys.argv[3])
"""
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(8, 3, 224, 224, generator=g)
    ids = torch.zeros(8, 77, dtype=torch.long)
    ids[:, :4] = torch.tensor([49406, 320, 1929, 49407])
    torch.save((pixels, ids), tmp_path / "inputs.pt")
    subprocess.run([sys.executable, "-c", script, str(b32_dir), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
                   check=True, timeout=300)
    image_embeds, text_embeds = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        assert_close(image_embeds, b32_ref.get_image_features(pixel_values=pixels).pooler_output, atol=1e-5, rtol=1e-5,
                     what="image embeddings after keep_freed_memory()")
        assert_close(text_embeds, b32_ref.get_text_features(input_ids=ids).pooler_output, atol=1e-5, rtol=1e-5,
                     what="text embeddings after keep_freed_memory()")


@pytest.mark.parametrize("kwargs, message", [
    ({"mmap_threshold": MAX_MMAP_THRESHOLD + 1}, "mmap_threshold must be between 0 and 33554432"),
    ({"mmap_threshold": -1}, "mmap_threshold"),
    ({"trim_threshold": 1 << 31}, "trim_threshold must be between 0 and 2147483647"),
    ({"trim_threshold": -5}, "trim_threshold"),
])
def test_out_of_range_thresholds_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keep_freed_memory(**kwargs)  # refused before any setting changes: this process keeps its defaults
