"""`miniclip train` end to end against the library's training step alone, in one run: what the data pipeline costs.

    python -m benchmarks.finetune [--steps 8] [--skip 2] [--batch-size 32] [--workers 2] [--repeats 3]

- pipeline: `python -m miniclip train --data pairs.csv ...` in a fresh process, on 640x480 JPEG files
  (benchmarks/preprocess.py's photos) with short captions, decoded and preprocessed by --workers DataLoader
  processes; then the same pairs as 4 WebDataset shards, streamed (`--data 'shards/{000..003}.tar'`). Its
  samples/s over steps skip+1..N comes from the cumulative rate its log.jsonl records at each step
  (rate_k = k * batch / (t_k - t_0), so t_k is recovered).
- library: `miniclip.train.Trainer.train_step` in this process on the same model (ViT-B/32-sized, random
  weights: benchmarks/model.py's checkpoint), the same options and batch size, on pixels and ids prepared
  beforehand; steps skip+1..N timed; with keep_freed_memory(), which the command calls too.

The first steps of a process are slower than the rest (AdamW's state is created at step 1; in the command
step 2 page-faulted ~1 GB in 3.4 s of system time, measured with getrusage), so both figures leave out
--skip 2 steps. Rounds interleave library, CSV and shards so that a busy spell of the machine (single runs
here varied from 4.6 to 5.9 samples/s) falls on all three; medians are reported.

The issue's target: the pipeline costs under 15% (pipeline >= 0.85x the library's samples/s). On a CPU the
decoding workers and the training step share the cores (decoding 32 of these JPEGs takes 0.28 s of one core).
"""

import argparse
import csv
import io
import json
import subprocess
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.model import checkpoint
from benchmarks.preprocess import photos

OPTIONS = {"lr": 1e-5, "warmup": 2}


def pipeline(data, out: Path, steps: int, batch_size: int, workers: int, skip: int) -> float:
    command = [sys.executable, "-m", "miniclip", "train", "--model", str(checkpoint()), "--data", str(data),
               "--out", str(out), "--steps", str(steps), "--batch-size", str(batch_size), "--workers", str(workers),
               "--log-every", "1", "--save-every", str(10 * steps), "--lr", str(OPTIONS["lr"]),
               "--warmup", str(OPTIONS["warmup"])]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    rates = {e["step"]: e["samples_per_s"] for e in map(json.loads, (out / "log.jsonl").read_text().splitlines())
             if e.get("event") == "step"}
    elapsed = {k: k * batch_size / rate for k, rate in rates.items()}  # seconds from the loop's start to step k
    return (steps - skip) * batch_size / (elapsed[steps] - elapsed[skip])


def write_shards(folder: Path, pairs, shards: int = 4) -> str:
    """The pairs as WebDataset shards (000.jpg + 000.txt, ...), as a brace pattern."""
    folder.mkdir()
    per = -(-len(pairs) // shards)
    for s in range(shards):
        with tarfile.open(folder / f"{s:03d}.tar", "w") as tar:
            for i, (path, caption) in enumerate(pairs[s * per:(s + 1) * per], start=s * per):
                tar.add(path, arcname=f"{i:06d}.jpg")
                info = tarfile.TarInfo(f"{i:06d}.txt")
                info.size = len(caption.encode())
                tar.addfile(info, io.BytesIO(caption.encode()))
    return str(folder / ("{000..%03d}.tar" % (shards - 1)))


def library(pairs: list[tuple[str, str]], steps: int, batch_size: int, skip: int) -> float:
    import miniclip
    from miniclip.train import TrainConfig, Trainer

    miniclip.keep_freed_memory()  # as the `miniclip` command does for its process: the same malloc on both sides
    model, preprocess = miniclip.load(str(checkpoint()), speedups=False)
    trainer = Trainer(model, TrainConfig(total_steps=steps, warmup_steps=OPTIONS["warmup"], lr=OPTIONS["lr"]))
    batches = [(preprocess([p for p, _ in pairs[i * batch_size:(i + 1) * batch_size]]),
                model.tokenize([c for _, c in pairs[i * batch_size:(i + 1) * batch_size]], truncate=True))
               for i in range(steps)]
    for pixels, ids in batches[:skip]:  # warm-up steps, left out as in the pipeline's figure
        trainer.train_step(pixels, ids)
    start = time.perf_counter()
    for pixels, ids in batches[skip:]:
        trainer.train_step(pixels, ids)
    return (steps - skip) * batch_size / (time.perf_counter() - start)


def main():
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--steps", type=int, default=8)
    cli.add_argument("--skip", type=int, default=2, help="warm-up steps left out of both figures")
    cli.add_argument("--batch-size", type=int, default=32)
    cli.add_argument("--workers", type=int, default=2)
    cli.add_argument("--repeats", type=int, default=3, help="rounds of (library, csv, shards), interleaved")
    args = cli.parse_args()
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "grey", "white"]
    paths = photos(args.steps * args.batch_size)
    pairs = [(p, f"a {colours[i % 8]} photo number {i}") for i, p in enumerate(paths)]
    rates = {"library": [], "csv": [], "shards": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.csv"
        with open(data, "w", newline="") as f:
            csv.writer(f).writerows([("image", "caption"), *pairs])
        shards = write_shards(Path(tmp) / "shards", pairs)
        for r in range(args.repeats):
            rates["library"].append(library(pairs, args.steps, args.batch_size, args.skip))
            rates["csv"].append(pipeline(data, Path(tmp) / f"run-{r}", args.steps, args.batch_size, args.workers,
                                         args.skip))
            rates["shards"].append(pipeline(shards, Path(tmp) / f"run-shards-{r}", args.steps, args.batch_size,
                                            args.workers, args.skip))
    ours, end_to_end, streamed = (statistics.median(rates[k]) for k in ("library", "csv", "shards"))
    print(f"{len(pairs)} JPEGs 640x480, ViT-B/32 sizes, batch {args.batch_size}, {args.workers} workers, "
          f"steps {args.skip + 1}..{args.steps}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"medians of {args.repeats} interleaved rounds")
    print(f"  library step on prepared tensors:  {ours:6.2f} samples/s")
    print(f"  miniclip train, pairs.csv:         {end_to_end:6.2f} samples/s = {end_to_end / ours:.0%} of the library's")
    print(f"  miniclip train, 4 shards streamed: {streamed:6.2f} samples/s = {streamed / ours:.0%} of the library's")
    print("  each round, samples/s (library, csv, shards):",
          "; ".join(", ".join(f"{rates[k][r]:.2f}" for k in rates) for r in range(args.repeats)))


if __name__ == "__main__":
    main()
