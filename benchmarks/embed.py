"""`miniclip embed FILES --out FOLDER` end to end against the image encoder alone, in one run.

    python -m benchmarks.embed [--images 1000] [--batch-size 32] [--workers 2] [--repeats 1]

The question: does the sharded embed pipeline (DataLoader worker processes decoding and preprocessing JPEGs,
the model in the main process) keep the encoder busy? Two measurements, alternating when repeated:

- encoder alone: the ViT-B/32-sized benchmark checkpoint (random weights, benchmarks/model.py) on tensors
  preprocessed beforehand, in batches of --batch-size, in this process: images/s.
- pipeline: `python -m miniclip embed LIST.txt --out TMP --workers W` on the same 640x480 JPEG files
  (benchmarks/preprocess.py's photos, listed in a file), a fresh process each time, no cache. Its images/s
  is n / the time of its embedding loop (from the first batch asked for to the last shard written; the
  command reports it, and how much of it the model spent waiting for images); the wall time, model load
  included, is shown beside it. Peak memory: the largest resident set of the embed process or any of its
  workers (getrusage RUSAGE_CHILDREN).

The issue's target is pipeline >= 85% of the encoder alone. On a CPU the decoding workers and the encoder
share cores, so the gap there is the decoding's share of the CPU; on a GPU the encoder no longer uses the
cores and the workers only need to keep up.
"""

import argparse
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.model import checkpoint
from benchmarks.preprocess import photos


def encoder_alone(model, pixels: torch.Tensor, batch_size: int) -> float:
    """images/s of model.encode_image over already preprocessed pixels."""
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(pixels), batch_size):
            model.encode_image(pixels[i:i + batch_size])
    return len(pixels) / (time.perf_counter() - start)


def pipeline(listing: Path, n: int, batch_size: int, workers: int, folder: Path) -> dict:
    """One `miniclip embed` run in a fresh process: images/s of its loop, wall time, waiting share."""
    command = [sys.executable, "-m", "miniclip", "embed", str(listing), "--out", str(folder), "--model",
               str(checkpoint()), "--batch-size", str(batch_size), "--workers", str(workers), "--shard-size", "10000"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    waited, loop = map(float, re.search(r"waited for images ([\d.]+) s of ([\d.]+) s", done.stderr).groups())
    return {"images_s": n / loop, "wall_s": wall, "waited_s": waited, "loop_s": loop}


def main():
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--images", type=int, default=1000)
    cli.add_argument("--batch-size", type=int, default=32)
    cli.add_argument("--workers", type=int, default=2)
    cli.add_argument("--repeats", type=int, default=1)
    args = cli.parse_args()

    import miniclip
    from miniclip.malloc import keep_freed_memory

    keep_freed_memory()  # as the command does for its own process, so both sides allocate alike
    files = photos(args.images)
    model, preprocess = miniclip.load(str(checkpoint()))
    pixels = preprocess(files)  # (n, 3, 224, 224), outside the timing
    encoder_alone(model, pixels[: args.batch_size], args.batch_size)  # warm up
    alone, piped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "photos.txt"
        listing.write_text("\n".join(files) + "\n")
        for r in range(args.repeats):
            alone.append(encoder_alone(model, pixels, args.batch_size))
            piped.append(pipeline(listing, len(files), args.batch_size, args.workers, Path(tmp) / f"out{r}"))
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    a = statistics.median(alone)
    best = sorted(piped, key=lambda x: x["images_s"])[len(piped) // 2]  # the median run (upper, if even)
    p = best["images_s"]
    print(f"{len(files)} JPEGs 640x480, ViT-B/32 sizes, batch {args.batch_size}, {args.workers} workers, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, medians of {args.repeats} runs")
    print(f"  encoder alone, preprocessed tensors:  {a:8.1f} images/s")
    print(f"  miniclip embed (its loop):            {p:8.1f} images/s  = {p / a:.0%} of the encoder alone")
    print(f"  miniclip embed, wall with model load: {best['wall_s']:8.1f} s; the model waited for images "
          f"{best['waited_s']:.1f} s of {best['loop_s']:.1f} s")
    print(f"  peak RSS of the embed process (largest of it and its workers): {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
