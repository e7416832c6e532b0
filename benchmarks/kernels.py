"""The two fp32 matrix-multiply kernels inside torch, on ViT-B/32's four linear-layer shapes (batch 32 x 50
tokens): torch's default (F.linear; MKL in the CPU wheels) against oneDNN, which miniclip.speedups uses for CPU
inference. This is the measurement behind that choice; the ratio depends on the CPU (see README).

    python -m benchmarks.kernels [--repeats 15]

GFLOP/s per kernel and shape, the median and the best of `repeats` runs, the kernels alternating.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from miniclip.speedups import onednn_linear

SHAPES = {  # name: (in_features, out_features), ViT-B/32 (width 768, MLP 3072)
    "qkv": (768, 2304),
    "attention proj": (768, 768),
    "fc1": (768, 3072),
    "fc2": (3072, 768),
}
ROWS = 32 * 50  # a batch of 32 images, 50 tokens each


def run(repeats: int = 15) -> None:
    if onednn_linear is None:
        raise SystemExit("this torch has no oneDNN linear op")
    print(f"| {'shape':<16} | {'kernel':<10} | median GFLOP/s | best GFLOP/s")
    print(f"|{'-' * 18}|{'-' * 12}|{'-' * 16}|-------------")
    g = torch.Generator().manual_seed(0)
    for name, (k, n) in SHAPES.items():
        x, w, b = torch.randn(ROWS, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
        kernels = {"torch": lambda: F.linear(x, w, b), "oneDNN": lambda: onednn_linear(x, w, b, "none", [], "")}
        times = {kernel: [] for kernel in kernels}
        with torch.no_grad():
            for fn in kernels.values():
                fn()
            for _ in range(repeats):
                for kernel, fn in kernels.items():
                    start = time.perf_counter()
                    fn()
                    times[kernel].append(time.perf_counter() - start)
        flops = 2 * ROWS * k * n
        for kernel, t in times.items():
            print(f"| {name:<16} | {kernel:<10} | {flops / statistics.median(t) / 1e9:>14.0f} | "
                  f"{flops / min(t) / 1e9:>11.0f}")


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--repeats", type=int, default=15)
    run(cli.parse_args().repeats)
