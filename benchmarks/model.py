"""The model against transformers' CLIPModel on the same weights and inputs, in one run: cold start and memory,
image and text encoding throughput, and the fraction of the machine's matrix-multiply speed reached; then
the image encoder again in a fresh process where both sides run with `miniclip.keep_freed_memory()` (opt-in).

miniclip is timed as `miniclip.load` returns it, with the inference speed-ups (miniclip/speedups.py); the rows
marked "plain model" time `CLIP.from_pretrained`'s model, the paper's arithmetic on torch's default kernels.

    python -m benchmarks.model [--repeats 5]

The checkpoint is ViT-B/32-sized with random weights (tests/checkpoints.py), written once to
benchmarks/.cache/. Timings are medians of repeated runs, the two sides alternating, because these machines
are noisy; the ratios are what to read.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
CHECKPOINT = CACHE / "vit-b-32"
sys.path.insert(0, str(HERE.parent / "tests"))  # checkpoints.py: the same checkpoint writer as the tests


def checkpoint() -> Path:
    """The ViT-B/32-sized benchmark checkpoint (config.json + model.safetensors), made if missing."""
    if not (CHECKPOINT / "model.safetensors").is_file():
        from checkpoints import B32, reference_model, write_checkpoint

        write_checkpoint(reference_model(B32, seed=0), CHECKPOINT, weights=("model.safetensors",),
                         tokenizer_files=False)
    return CHECKPOINT


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def side_by_side(ours, theirs, repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Median seconds of `ours()` and `theirs()`, run alternately so drifts in machine speed hit both."""
    for _ in range(warmup):
        ours(), theirs()
    a, b = [], []
    for _ in range(repeats):
        a.append(median_time(ours, 1))
        b.append(median_time(theirs, 1))
    return statistics.median(a), statistics.median(b)


def page_faults(ours, theirs, rounds: int = 2) -> tuple[int, int]:
    """Median minor page faults of one call of `ours()` and of `theirs()`, alternating as `side_by_side` does:
    how much of what a call writes the process had handed back to the OS since the call before."""
    def faults(fn):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fn()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    a, b = [], []
    for _ in range(rounds):
        a.append(faults(ours))
        b.append(faults(theirs))
    return int(statistics.median(a)), int(statistics.median(b))


# -----------------------------------------------------------------------------
# The matmul bound: the encoders' matrix multiplies, counted from the config, at this machine's best speed
# for each of their shapes (a multiply-add is 2 FLOPs; only matrix multiplies are counted)


class Matmul(NamedTuple):
    """`count` products of (m x k) and (k x n) matrices; `timed`: whether the bound times this shape."""
    m: int
    k: int
    n: int
    count: int
    timed: bool = True


def tower_matmuls(batch: int, tokens: int, width: int, mlp_width: int, layers: int, pooled: bool = True):
    """A transformer tower's matrix multiplies as miniclip runs it for a pooled embedding. Every block runs
    on every token except the last, which computes keys and values for all tokens but everything else for
    the pooled token alone (pooled=False: the last block on every token too, as a plain implementation does).
    Attention's q k^T and (attention) v, per head, are written as one (queries, width, tokens) product each:
    the same FLOPs, not timed as one."""
    def block(queries, count):  # `queries` tokens per sequence attend to all `tokens`, then the MLP
        rows = batch * queries
        return [Matmul(batch * tokens, width, 3 * width, count),  # fused q, k, v (every token)
                Matmul(rows, width, tokens, 2 * count, timed=False),  # q k^T and (attention) v
                Matmul(rows, width, width, count),  # output projection
                Matmul(rows, width, mlp_width, count), Matmul(rows, mlp_width, width, count)]  # fc1, fc2
    return block(tokens, layers - 1) + block(1 if pooled else tokens, 1)


def image_matmuls(config, batch: int, pooled: bool = True):
    v = config.vision
    patches = v.grid_size ** 2
    return ([Matmul(batch * patches, 3 * v.patch_size ** 2, v.width, 1)]  # patch embedding
            + tower_matmuls(batch, 1 + patches, v.width, v.mlp_width, v.layers, pooled)
            + [Matmul(batch, v.width, config.embed_dim, 1)])  # projection into the shared space


def text_matmuls(config, batch: int, tokens: int):
    t = config.text
    return (tower_matmuls(batch, tokens, t.width, t.mlp_width, t.layers)
            + [Matmul(batch, t.width, config.embed_dim, 1)])


def flops(matmuls) -> int:
    return sum(2 * m * k * n * count for m, k, n, count, _ in matmuls)


def image_flops(config, pooled: bool = True) -> int:
    """FLOPs per image."""
    return flops(image_matmuls(config, 1, pooled))


def matmul_kernels(m: int, k: int, n: int) -> dict:
    """The two fp32 (m x k) @ (k x n) kernels inside torch: its default (MKL here) and oneDNN's."""
    x, w = torch.randn(m, k), torch.randn(n, k)
    kernels = {"torch's matmul": lambda: x @ w.t()}
    from miniclip.speedups import onednn_linear

    if onednn_linear is not None:
        kernels["oneDNN"] = lambda: onednn_linear(x, w, None, "none", [], "")
    return kernels


def matmul_times(matmuls, repeats: int) -> dict:
    """Shape (m, k, n) -> the faster kernel's (fastest, median) seconds over many back-to-back runs.

    Back to back, not alternated with the encoders: right after an encoder a matmul's output buffer is
    page-faulted in afresh and its inputs are out of cache, which once put an encoder at 103% of such a
    'bound'."""
    times = {}
    for m, k, n, _, timed in matmuls:
        if timed and (m, k, n) not in times:
            runs = []
            for fn in matmul_kernels(m, k, n).values():
                fn()
                runs.append([median_time(fn, 1) for _ in range(2 * repeats + 5)])
            best = min(runs, key=min)
            times[m, k, n] = min(best), statistics.median(best)
    return times


def bound_seconds(matmuls, times: dict, statistic: int = 0) -> float:
    """The matmul bound: the time the matrix multiplies take if each shape runs at the speed in `times`
    (statistic 0: the fastest this machine did it; 1: its median run).

    Attention's per-head products are too small to time as one matmul; they are counted at the best speed
    measured for any shape (a fraction of a percent of the FLOPs)."""
    speed = {(m, k, n): 2 * m * k * n / t[statistic] for (m, k, n), t in times.items()}
    top = max(speed.values())
    return sum(2 * m * k * n * count / speed.get((m, k, n), top) for m, k, n, count, _ in matmuls)


def faster(*measurements: dict) -> dict:
    """Per shape, the better of several `matmul_times` measurements, fastest and median each. The bound is
    timed before and after the encoders: a slow spell of the machine during one timing (the bound's speed
    moved between 185 and 209 GFLOP/s from run to run) would loosen it, and once read 99%."""
    return {shape: tuple(map(min, zip(*(m[shape] for m in measurements)))) for shape in measurements[0]}


def timed_against_bound(ours, theirs, matmuls, repeats: int) -> tuple[float, float, dict]:
    """`side_by_side(ours, theirs)`, and the matmul times of `matmuls`, measured before and after it."""
    before = matmul_times(matmuls, repeats)
    a, b = side_by_side(ours, theirs, repeats)
    return a, b, faster(before, matmul_times(matmuls, repeats))


def bound_note(seconds: float, matmuls, times: dict) -> str:
    """An encoder's (median) time as a fraction of its matmul bound: strictly, against the fastest runs of
    each matmul shape, and like for like, against their median runs."""
    fastest, median = bound_seconds(matmuls, times), bound_seconds(matmuls, times, statistic=1)
    return (f"{fastest / seconds:.0%} of the matmul bound ({flops(matmuls) / fastest / 1e9:.0f} GFLOP/s), "
            f"{median / seconds:.0%} of its median runs")


# -----------------------------------------------------------------------------
# Cold start: a fresh process, import + load to a model that has run once


COLD_START = r"""
import json, sys, time
start = time.perf_counter()

def rss_mb(field="VmRSS"):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

import torch
after_torch = rss_mb()
side, path = sys.argv[1], sys.argv[2]
if side == "miniclip":
    import miniclip
    model, preprocess = miniclip.load(path)
else:
    from transformers import CLIPModel
    model = CLIPModel.from_pretrained(path).eval()
ready = time.perf_counter() - start
ids = torch.zeros(1, 77, dtype=torch.long); ids[0, :3] = torch.tensor([49406, 320, 49407])
with torch.no_grad():
    if side == "miniclip":
        model(torch.zeros(1, 3, 224, 224), ids)
    else:
        model(pixel_values=torch.zeros(1, 3, 224, 224), input_ids=ids)
print(json.dumps({"seconds": ready, "held_mb": rss_mb() - after_torch, "peak_mb": rss_mb("VmHWM") - after_torch}))
"""


def cold_start(side: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", COLD_START, side, str(path)], capture_output=True, text=True,
                         check=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "TRANSFORMERS_VERBOSITY": "error"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def cold_start_rows(path: Path, repeats: int) -> list[dict]:
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(cold_start("miniclip", path))
        theirs.append(cold_start("transformers", path))
    med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    weights_mb = (path / "model.safetensors").stat().st_size / 2**20
    return [
        row("cold start: import + load (s)", med(ours, "seconds"), med(theirs, "seconds"), lower_is_better=True),
        row("memory held after load + 1 forward (MB)", med(ours, "held_mb"), med(theirs, "held_mb"),
            lower_is_better=True, note=f"weights file {weights_mb:.0f} MB; ours is "
                                       f"{med(ours, 'held_mb') / weights_mb:.2f}x the file"),
        row("peak memory during cold start (MB)", med(ours, "peak_mb"), med(theirs, "peak_mb"), lower_is_better=True),
    ]


def row(what, ours, theirs, lower_is_better=False, note=""):
    """One line of the table; `ratio` is always 'how many times better miniclip is' (> 1 is a win)."""
    ratio = theirs / ours if lower_is_better else ours / theirs
    return {"what": what, "miniclip": ours, "reference": theirs, "ratio": ratio, "note": note}


# -----------------------------------------------------------------------------
# Throughput, in process


def caption_ids(n: int):
    """Realistic captions (the tokenizer benchmark's corpus) tokenized to OpenAI's 77-token rows."""
    from benchmarks.text_corpus import captions

    from miniclip import tokenize

    return tokenize(captions(n), truncate=True)


def load_both(path: Path):
    """(miniclip as `miniclip.load` returns it, transformers' CLIPModel)."""
    from transformers import CLIPModel

    import miniclip

    return miniclip.load(path)[0], CLIPModel.from_pretrained(path).eval()


def image_batch_row(ours, theirs, repeats: int, what: str = "image encoder, batch 32 (images/s)",
                    pooled: bool = True) -> dict:
    """pooled: whether `ours` runs the last block for the class token alone (the speed-ups do)."""
    px = torch.randn(32, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    config, matmuls = ours.config, image_matmuls(ours.config, 32, pooled)
    with torch.no_grad():
        a, b, times = timed_against_bound(lambda: ours.encode_image(px),
                                          lambda: theirs.get_image_features(pixel_values=px), matmuls, repeats)
        faults = page_faults(lambda: ours.encode_image(px), lambda: theirs.get_image_features(pixel_values=px))
    note = (f"{bound_note(a, matmuls, times)}; {image_flops(config, pooled) / 1e9:.2f} GFLOP/image, "
            f"a plain ViT {image_flops(config, pooled=False) / 1e9:.2f}; page faults a batch: {faults[0]} vs {faults[1]}")
    return row(what, 32 / a, 32 / b, note=note)


def encoder_rows(path: Path, repeats: int) -> list[dict]:
    import miniclip

    ours, theirs = load_both(path)
    plain = miniclip.CLIP.from_pretrained(path)
    config = ours.config
    rows = [image_batch_row(ours, theirs, repeats),
            image_batch_row(plain, theirs, repeats, "image encoder, batch 32, plain model (images/s)",
                            pooled=False)]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        one = torch.randn(1, 3, 224, 224, generator=g)
        a, b = side_by_side(lambda: ours.encode_image(one), lambda: theirs.get_image_features(pixel_values=one), repeats)
        rows.append(row("image encoder, batch 1 latency (ms)", 1000 * a, 1000 * b, lower_is_better=True))

        ids = caption_ids(256)
        longest = int((ids == 49407).int().argmax(-1).max()) + 1
        a, b = side_by_side(lambda: ours.encode_text(ids), lambda: theirs.get_text_features(input_ids=ids), repeats)
        rows.append(row("text, 256 captions vs transformers fed 77 tokens (texts/s)", 256 / a, 256 / b,
                        note=f"longest caption {longest} tokens"))
        cut = ids[:, :longest]
        b = median_time(lambda: theirs.get_text_features(input_ids=cut), repeats)
        rows.append(row("text, 256 captions vs transformers padded to the longest (texts/s)", 256 / a, 256 / b))

        full = torch.randint(1, 49406, (64, 77), generator=g)
        full[:, 0], full[:, -1] = 49406, 49407
        matmuls = text_matmuls(config, 64, 77)
        a, b, times = timed_against_bound(lambda: ours.encode_text(full),
                                          lambda: theirs.get_text_features(input_ids=full), matmuls, repeats)
        note = bound_note(a, matmuls, times)
        rows.append(row("text, 64 full 77-token inputs (texts/s)", 64 / a, 64 / b, note=note))
        a, b = side_by_side(lambda: plain.encode_text(full), lambda: theirs.get_text_features(input_ids=full), repeats)
        rows.append(row("text, 64 full 77-token inputs, plain model (texts/s)", 64 / a, 64 / b))
    return rows


KEEP_FREED_MEMORY = "image encoder, batch 32, keep_freed_memory() (images/s)"


def keep_freed_memory_rows(path: Path, repeats: int) -> list[dict]:
    """The opt-in `miniclip.keep_freed_memory()`, for both sides: a fresh process, since it is process-wide."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.model", "--keep-freed-memory", "--repeats", str(repeats)],
                         cwd=HERE.parent, capture_output=True, text=True, check=True,
                         env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    return [json.loads(out.stdout.strip().splitlines()[-1])]


def keep_freed_memory_child(repeats: int) -> dict:
    from miniclip import keep_freed_memory

    changed = keep_freed_memory()
    result = image_batch_row(*load_both(checkpoint()), repeats, what=KEEP_FREED_MEMORY)
    result["note"] = ("opt-in, both sides; " if changed else "NOT APPLIED (not glibc, or set by the environment); ") + result["note"]
    return result


def run(repeats: int = 5) -> list[dict]:
    path = checkpoint()
    return cold_start_rows(path, repeats) + encoder_rows(path, repeats) + keep_freed_memory_rows(path, repeats)


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}\n")
    print(f"| {'measure':<66} | {'miniclip':>10} | {'reference':>10} | {'ratio':>6} | note")
    print(f"|{'-' * 68}|{'-' * 12}|{'-' * 12}|{'-' * 8}|------")
    for r in rows:
        print(f"| {r['what']:<66} | {r['miniclip']:>10.1f} | {r['reference']:>10.1f} | {r['ratio']:>5.2f}x | {r['note']}")


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--repeats", type=int, default=5)
    cli.add_argument("--keep-freed-memory", action="store_true",
                     help="only the image encoder row, with miniclip.keep_freed_memory(); prints it as JSON")
    args = cli.parse_args()
    if args.keep_freed_memory:
        print(json.dumps(keep_freed_memory_child(args.repeats)))
    else:
        print_table(run(args.repeats), "miniclip vs transformers (ratio > 1: miniclip is better)")
