"""`python -m benchmarks [--repeats N]`: every benchmark, miniclip against its reference, in one run and one table.

- model.py:      cold start, memory, image and text encoders vs transformers' CLIPModel (same weights)
- preprocess.py: JPEG files to pixels vs transformers' CLIPImageProcessor (Pillow backend)
- tokenizer.py:  lines/s vs OpenAI's tokenizer and transformers' CLIPTokenizerFast
- relevance.py:  `miniclip relevance` on an 8000x8000 JPEG (time, peak memory) vs the first implementation
- kernels.py:    (run on its own, not part of this table) torch's default matmul kernel vs oneDNN

Ratios are 'times better than the reference' (> 1: miniclip wins), medians of repeated runs.
"""

import argparse
import os
import platform

import torch

from benchmarks import model, preprocess, relevance, tokenizer


def main():
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--repeats", type=int, default=5, help="runs per measurement; medians are reported")
    repeats = cli.parse_args().repeats
    rows = model.run(repeats) + preprocess.run(repeats) + tokenizer.run(repeats) + relevance.run(repeats)
    title = (f"miniclip {_version()} vs references: {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPU cores, torch {torch.__version__}, fp32, medians of {repeats} runs")
    model.print_table(rows, title)


def _version() -> str:
    from importlib.metadata import version

    return version("miniclip")


if __name__ == "__main__":
    main()
