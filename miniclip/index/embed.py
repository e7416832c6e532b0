"""Embedding a large image collection into shards: resumable, and split among torchrun's processes.

    miniclip embed photos/ --out photos/                                     # one process
    torchrun --nproc_per_node 8 -m miniclip embed photos/ --out photos/ --device cuda   # one per GPU
    torchrun --nnodes 4 --node_rank R --rdzv-endpoint HOST:PORT --nproc_per_node 8 -m miniclip embed ...

The plan (which inputs make which shard) depends only on the inputs and --shard-size. Every process lists the
shards that are not done yet, all processes wait until all have looked (a barrier, so no process sees a shard
another has just written), and process r takes the r-th, (r+W)-th, ... missing shard. Each writes its shards
atomically; after a second barrier the first process writes the manifest with every shard's row count.
A rerun after a crash or Ctrl-C finds the shards that are there and computes only the others.

The processes exchange nothing but barriers, so they use gloo on any device. The memory a process holds is
one shard's embeddings (shard_size x dim x 4 bytes) plus the DataLoader's prefetched batches.
"""

import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from . import layout
from .sources import ImageFiles, TarShards, collate, plan_shards, shard_batches, tar_identity


@dataclass
class Settings:
    shard_size: int = 10_000  # rows per shard: the unit of resumption, and of the memory a process holds
    batch_size: int = 32
    workers: int = 2  # DataLoader processes decoding images (0: in the main process)
    shard_dtype: str = "float32"  # or "float16": half the disk and the search's reading, ~1e-3 relative error
    skip_errors: bool = False


# -----------------------------------------------------------------------------
# The few torch.distributed calls: joining torchrun's group, and barriers


def join() -> None:
    """Join torchrun's process group (RANK and WORLD_SIZE in the environment), if started by torchrun."""
    if "RANK" in os.environ and dist.is_available() and not dist.is_initialized():
        # The last barrier waits for the slowest process's shards, which may take far longer than gloo's
        # default 30 minutes; a process that fails is ended by torchrun, not by this timeout.
        dist.init_process_group("gloo", timeout=timedelta(hours=24))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def default_workers() -> int:
    """DataLoader workers per process: up to 4, no more than this process's share of the CPU cores (torchrun
    starts LOCAL_WORLD_SIZE processes on each machine), which is what DataLoader itself warns beyond."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def device_for_rank(name: str) -> str:
    """`--device cuda` under torchrun means this process's GPU (LOCAL_RANK), one GPU per process."""
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return name


# -----------------------------------------------------------------------------
# The run


def embed_to_folder(model, preprocess, inputs: list, out: Path, model_info: dict, settings: Settings,
                    progress_bar=None, tars: bool = False) -> dict:
    """Embed `inputs` (image paths, or WebDataset tar files with tars=True: one shard each) into the sharded
    folder `out`; returns a summary (rows, shards, computed now, skipped). Call join() first under torchrun;
    every process calls this with the same arguments."""
    out = Path(out)
    plan = [tar_identity(t) for t in inputs] if tars else plan_shards(inputs, settings.shard_size)
    manifest = {"format": layout.FORMAT, "model": model_info, "dim": model.config.embed_dim,
                "shard_dtype": settings.shard_dtype, "shard_size": "one per tar" if tars else settings.shard_size,
                "inputs": len(inputs), "plan": layout.digest([k for keys in plan for k in keys]),
                "complete": False, "shards": []}
    check_folder(out, manifest)  # every process checks, so a mismatch stops all of them alike
    barrier()
    if rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".shard-*.tmp-*"):  # a killed run's half-written file; nobody writes yet
            stale.unlink(missing_ok=True)
        layout.write_manifest(out, manifest)
    missing = [i for i, keys in enumerate(plan) if not layout.is_done(out / layout.shard_name(i), keys)]
    barrier()  # everyone has looked before anyone writes
    mine = missing[rank()::world_size()]
    stats = embed_shards(model, preprocess, {i: plan[i] for i in mine}, out, settings, progress_bar,
                         tars={i: inputs[i] for i in mine} if tars else None)
    barrier()  # every shard is written
    infos = [layout.shard_info(out / layout.shard_name(i)) for i in range(len(plan))]
    if rank() == 0:
        manifest["shards"] = [{"file": layout.shard_name(i), "rows": info["rows"]} for i, info in enumerate(infos)]
        manifest["complete"] = True
        layout.write_manifest(out, manifest)
    skipped = [s for i in range(len(plan)) for s in layout.shard_metadata(out / layout.shard_name(i))["skipped"]]
    return {"rows": sum(info["rows"] for info in infos), "shards": len(plan), "computed": len(missing),
            "mine": len(mine), "skipped": skipped, **stats}


def check_folder(out: Path, manifest: dict) -> None:
    """A folder to resume must hold this same job (model, inputs, shard size and dtype); a new one, nothing."""
    from ..errors import InputError

    old = layout.read_manifest(out) if out.is_dir() else None
    if old is None:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise InputError(f"--out {out} exists and is not a miniclip shard folder (no {layout.MANIFEST}): "
                             "give a new or empty folder")
        return
    for field, what in [("model", "another model"), ("plan", "other inputs"), ("shard_size", "another --shard-size"),
                        ("shard_dtype", "another --shard-dtype"), ("dim", "another embedding size")]:
        if old.get(field) != manifest[field]:
            raise InputError(f"--out {out} holds embeddings of {what}; resuming would mix them: give a new --out "
                             "folder (or delete this one)")


def embed_shards(model, preprocess, shards: dict, out: Path, settings: Settings, progress_bar, tars=None):
    """Embed these shards ({shard: its planned keys}), writing each as soon as its last batch is done.
    `tars` ({shard: tar file}) when the inputs are WebDataset shards. Returns timing figures: `waiting_s` is
    how long the model sat idle waiting for the DataLoader's next batch."""
    from torch.utils.data import DataLoader

    from ..errors import ImageError

    if not shards:  # all done already (or left to the other processes): start no workers
        return {"waiting_s": 0.0, "computing_s": 0.0}
    on_gpu = model.device.type == "cuda"
    workers = settings.workers if tars is None else min(settings.workers, len(tars))  # tars: one worker each at most
    prefetch = {"prefetch_factor": 4} if workers else {}
    if tars is None:
        loader = DataLoader(ImageFiles(shards, preprocess), batch_sampler=shard_batches(shards, settings.batch_size),
                            collate_fn=collate, num_workers=workers, pin_memory=on_gpu, **prefetch)
        total = sum(map(len, shards.values()))
    else:  # the dataset batches by itself (a batch never spans two tars)
        loader = DataLoader(TarShards(tars, preprocess, settings.batch_size), batch_size=None,
                            num_workers=workers, pin_memory=on_gpu, **prefetch)
        total = None  # unknown until the tars are read
    store = torch.float16 if settings.shard_dtype == "float16" else torch.float32
    rows = {i: ([], []) for i in shards}  # shard -> (keys, embeddings) so far, until its last batch
    skipped = {i: [] for i in shards}
    bar = progress_bar(total, "embedding images") if progress_bar else None
    waiting = computing = 0.0
    clock = time.perf_counter()
    try:
        for shard, keys, pixels, errors, last in loader:
            now = time.perf_counter()
            waiting += now - clock
            for key, error in errors:
                if not settings.skip_errors:
                    raise ImageError(f"cannot read {key}: {error}")
                skipped[shard].append(f"{key} ({error})")
            if pixels is not None:
                with torch.no_grad():
                    x = pixels.to(model.device, non_blocking=True).to(model.dtype)
                    embeds = model.encode_image(x).float().cpu()  # .cpu() waits for the GPU: timing is honest
                rows[shard][0].extend(keys)
                rows[shard][1].append(embeds)
            if last:
                done_keys, done = rows.pop(shard)
                embeds = torch.cat(done) if done else torch.empty(0, model.config.embed_dim)
                layout.write_shard(out / layout.shard_name(shard), embeds.to(store), done_keys, shards[shard],
                                   skipped[shard])
            if bar is not None:
                bar.update(len(keys) + len(errors))
            clock = time.perf_counter()
            computing += clock - now
    finally:
        if bar is not None:
            bar.close()
    return {"waiting_s": waiting, "computing_s": computing}


def report(summary: dict, out: Path) -> None:
    """One line on stderr from the first process: what was written, and whether the model waited for images."""
    if rank() != 0:
        return
    total = summary["waiting_s"] + summary["computing_s"]
    waited = f"; the model waited for images {summary['waiting_s']:.1f} s of {total:.1f} s" if total else ""
    print(f"wrote {summary['rows']} embeddings in {summary['shards']} shards to {out} "
          f"({summary['computed']} shards computed now, {summary['shards'] - summary['computed']} already there"
          f"{waited})", file=sys.stderr)
