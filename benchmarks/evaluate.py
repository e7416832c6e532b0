"""The cost of evaluating: building ImageNet's zero-shot classifier (1,000 classes x 80 templates = 80,000
prompts) in bounded batches, the retrieval metrics and a linear probe. Not part of `python -m benchmarks`'
table (there is no reference to compare with); run on its own:

    python -m benchmarks.evaluate [--prompts 2048] [--threads N]

- The classifier at the tiny test size, all 80,000 prompts: the time and the growth of peak memory (RSS)
  over the loaded model during the build, in a fresh process (Linux: /proc/self/status). In one forward
  pass of all 80,000 (`--batch-size 80000`) the tiny model's peak grows 1.6 GB; in batches, by about one batch.
- The classifier at ViT-B/32 size (random weights, benchmarks/.cache/vit-b-32): the first --prompts of the
  80,000 (whole classes, label-major), timed, and the full build extrapolated linearly (the cost is per
  prompt: every batch is the same size and the prompts are alike in length).
- retrieval_recall on 5,000 images x 25,000 captions (COCO's Karpathy test split's size), random embeddings.
- linear_probe (the full L2 search, 11-15 L-BFGS fits) on 2,000 x 512 random features, 10 classes.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
sys.path.insert(0, str(HERE.parent / "tests"))  # checkpoints.py: the same checkpoint writer as the tests

CHILD = """
import json, re, sys, time
import torch
torch.set_num_threads(int(sys.argv[4]))
import miniclip
from miniclip.evaluate import imagenet_classnames, imagenet_templates

def rss_mb(field):  # Linux: VmRSS, resident now; VmHWM, the peak since the last reset
    return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024

model, _ = miniclip.load(sys.argv[1])
n_classes, batch = int(sys.argv[2]), int(sys.argv[3])
open("/proc/self/clear_refs", "w").write("5")  # reset the peak to now: loading's own peak is not the build's
before = rss_mb("VmRSS")
start = time.perf_counter()
miniclip.zero_shot_classifier(model, imagenet_classnames()[:n_classes], imagenet_templates(), batch_size=batch)
seconds = time.perf_counter() - start
print(json.dumps({"prompts": 80 * n_classes, "seconds": seconds, "rss_growth_mb": rss_mb("VmHWM") - before,
                  "peak_mb": rss_mb("VmHWM")}))
"""


def checkpoint(name: str, spec) -> Path:
    """A random-weight checkpoint folder in benchmarks/.cache/, written once."""
    folder = CACHE / name
    if not (folder / "model.safetensors").is_file():
        from checkpoints import reference_model, write_checkpoint

        write_checkpoint(reference_model(spec, seed=0), folder, weights=("model.safetensors",), tokenizer_files=False)
    return folder


def classifier_build(folder: Path, n_classes: int, batch: int, threads: int) -> dict:
    """Build the first n_classes x 80 templates in a fresh process; its time and memory."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(n_classes), str(batch), str(threads)],
                          capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def retrieval_time(threads: int) -> float:
    import torch

    from miniclip.evaluate import retrieval_recall

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    images, texts = torch.randn(5000, 512, generator=g), torch.randn(25000, 512, generator=g)
    start = time.perf_counter()
    retrieval_recall(images, texts, torch.arange(25000) // 5)
    return time.perf_counter() - start


def probe_time(threads: int) -> tuple[float, int]:
    import torch

    from miniclip.evaluate import linear_probe

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 512, generator=g)
    y = torch.arange(2000) % 10
    x = centres[y] + 3 * torch.randn(2000, 512, generator=g)
    start = time.perf_counter()
    result = linear_probe(x[:1500], y[:1500], x[1500:], y[1500:])
    return time.perf_counter() - start, len(result.validation)


def main():
    from checkpoints import B32, TINY

    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--prompts", type=int, default=2048, help="ViT-B/32 prompts to time (rounded to whole classes)")
    cli.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    cli.add_argument("--batch-size", type=int, default=256, help="prompts per forward pass")
    args = cli.parse_args()
    tiny = classifier_build(checkpoint("tiny", TINY), 1000, args.batch_size, args.threads)
    print(f"tiny model, 1,000 x 80 = {tiny['prompts']:,} prompts: {tiny['seconds']:.1f} s, peak RSS "
          f"{tiny['peak_mb']:.0f} MB, grown {tiny['rss_growth_mb']:.0f} MB during the build "
          f"(batches of {args.batch_size})")
    b32 = classifier_build(checkpoint("vit-b-32", B32), max(1, args.prompts // 80), args.batch_size, args.threads)
    per_prompt = b32["seconds"] / b32["prompts"]
    print(f"ViT-B/32 size, {b32['prompts']:,} prompts: {b32['seconds']:.1f} s ({1 / per_prompt:.0f} prompts/s), "
          f"peak RSS {b32['peak_mb']:.0f} MB, grown {b32['rss_growth_mb']:.0f} MB; all 80,000 extrapolated: "
          f"{80_000 * per_prompt / 60:.1f} min")
    print(f"retrieval_recall, 5,000 images x 25,000 captions: {retrieval_time(args.threads):.1f} s")
    seconds, fits = probe_time(args.threads)
    print(f"linear_probe, 1,500 + 500 x 512 features, 10 classes: {seconds:.1f} s for {fits} + 1 L-BFGS fits")
    print(f"({os.cpu_count()} CPU cores, {args.threads} torch threads, "
          f"max RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
