"""Preprocessing throughput (images/s): miniclip.preprocess against transformers' CLIPImageProcessorPil, both
reading the same 640x480 JPEG files from their paths, in one run.

    python -m benchmarks.preprocess [--repeats 5] [--images 64]

The photos are made once (seeded, smooth random colour fields with a little grain, so JPEG has realistic
work to do, unlike pure noise) into benchmarks/.cache/. Both sides return the same [n, 3, 224, 224] tensor
(checked before timing; the max difference goes in the note). miniclip reads a batch on up to
min(cores, 8) threads (Pillow releases the GIL while decoding and resizing); the "1 thread" row calls it
image by image, to show what the pipeline itself gains. Medians of `repeats` runs, the sides alternating
so drifts in machine speed hit all of them.
"""

import argparse
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.model import print_table, row

CACHE = Path(__file__).parent / ".cache" / "jpeg_640x480"
WIDTH, HEIGHT = 640, 480
DEFAULT_IMAGES = 64
JPEG_QUALITY = 90


def photos(n: int = DEFAULT_IMAGES) -> list[str]:
    """Paths of n seeded 640x480 JPEGs, made on first use."""
    CACHE.mkdir(parents=True, exist_ok=True)
    paths = [CACHE / f"{i:04d}.jpg" for i in range(n)]
    for i, path in enumerate(paths):
        if not path.exists():
            _photo(seed=i).save(path, quality=JPEG_QUALITY)
    return [str(p) for p in paths]


def _photo(seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 8, generator=g)  # a few colour blobs...
    smooth = F.interpolate(coarse, size=(HEIGHT, WIDTH), mode="bicubic", align_corners=False)[0]
    grain = torch.randn(3, HEIGHT, WIDTH, generator=g) * 0.02  # ...and a little sensor noise
    pixels = ((smooth + grain).clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.frombytes("RGB", (WIDTH, HEIGHT), pixels.permute(1, 2, 0).contiguous().numpy().tobytes())


def _sides():
    """name -> function(paths) -> [n, 3, 224, 224]."""
    from transformers import CLIPImageProcessorPil

    import miniclip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    return {
        "miniclip": miniclip.preprocess,
        "miniclip, 1 thread": lambda paths: torch.stack([miniclip.preprocess(p) for p in paths]),
        "CLIPImageProcessorPil": lambda paths: reference(paths, return_tensors="pt")["pixel_values"],
    }


def images_per_second(paths: list[str], repeats: int) -> tuple[dict[str, float], float]:
    """Median images/s of each side, and the largest difference between miniclip's output and the reference's."""
    sides = _sides()
    outputs = {name: run(paths) for name, run in sides.items()}  # warm-up (file cache, imports) and check
    max_diff = max((out - outputs["CLIPImageProcessorPil"]).abs().max().item() for out in outputs.values())
    times = {name: [] for name in sides}
    for _ in range(repeats):
        for name, run in sides.items():
            start = time.perf_counter()
            run(paths)
            times[name].append(time.perf_counter() - start)
    return {name: len(paths) / statistics.median(t) for name, t in times.items()}, max_diff


def run(repeats: int = 5, images: int = DEFAULT_IMAGES) -> list[dict]:
    """Rows for the benchmark table: miniclip's images/s against CLIPImageProcessorPil's."""
    speed, max_diff = images_per_second(photos(images), repeats)
    theirs = speed.pop("CLIPImageProcessorPil")
    note = f"{images} JPEGs {WIDTH}x{HEIGHT} from paths, max |diff| {max_diff:.1e}"
    return [row(f"preprocess JPEG files, {name} (images/s)", ours, theirs, note=note) for name, ours in speed.items()]


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--repeats", type=int, default=5)
    cli.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    arguments = cli.parse_args()
    print_table(run(arguments.repeats, arguments.images),
                "miniclip preprocessing vs transformers (ratio > 1: miniclip is faster)")
