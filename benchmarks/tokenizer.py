"""Tokenizer throughput (lines/s): miniclip.tokenize against OpenAI's clip.tokenize and transformers' Rust
CLIPTokenizerFast, on the same texts, in one run.

    python -m benchmarks.tokenizer [--repeats 5] [--lines 10000]

Two corpora from benchmarks/text_corpus.py: plain captions (what CLIP is fed in practice) and the torture
corpus the exactness tests use (entities, mojibake, emoji, CJK, very long texts...). Every side produces
the same [n, 77] rows: OpenAI's and ours are identical; transformers' agree on ordinary text (it skips
ftfy and HTML unescaping) and pad with 49407 instead of 0.

"warm": the tokenizers keep their word caches from a first pass, as a long-running job does (all three
have one). "cold": a fresh tokenizer for every run, construction not timed. Medians of `repeats` runs,
the sides alternating so drifts in machine speed hit all of them.

One more row times a single word of LONG_WORD_LETTERS random letters (a pasted hash, a DNA string), cold,
against OpenAI's tokenizer: its merge loop rescans the word after every merge (quadratic), miniclip's
keeps the pairs in a heap (tokenizer/bpe.py).
"""

import argparse
import random
import statistics
import tempfile
import time

from benchmarks.model import print_table, row
from benchmarks.text_corpus import captions, corpus
from miniclip.tokenizer.clean import replace_lone_surrogates

CONTEXT_LENGTH = 77
DEFAULT_LINES = 10_000
LONG_WORD_LETTERS = 8_000


def _sides(cold: bool):
    """name -> (make, tokenize(tokenizer, texts)); `make()` builds a tokenizer (fresh ones when cold)."""
    import miniclip.tokenizer as ours
    from tests import oracles

    hub_folder = tempfile.mkdtemp(prefix="miniclip-bench-")
    oracles.write_hub_vocab_files(hub_folder)

    def make_openai():
        if not cold:
            return oracles.openai_simple_tokenizer()
        return oracles.openai_simple_tokenizer_module().SimpleTokenizer()

    def run_openai(tokenizer, texts):
        # clip.tokenize's own code, compiled from OpenAI's clip.py, bound to the tokenizer it was built with;
        # cold runs use SimpleTokenizer's encode with the same padding loop, so only the cache differs.
        if not cold:
            return oracles.openai_tokenize(texts, truncate=True)
        return _openai_rows(tokenizer, texts)

    def make_hf():
        from transformers import CLIPTokenizerFast

        return CLIPTokenizerFast(vocab=f"{hub_folder}/vocab.json", merges=f"{hub_folder}/merges.txt")

    def run_hf(tokenizer, texts):
        return tokenizer(texts, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True,
                         return_tensors="pt")["input_ids"]

    return {
        "miniclip": (lambda: ours.Tokenizer() if cold else ours.default_tokenizer(),
                     lambda tokenizer, texts: tokenizer.tokenize(texts, truncate=True)),
        "OpenAI": (make_openai, run_openai),
        "CLIPTokenizerFast": (make_hf, run_hf),
    }


def _openai_rows(tokenizer, texts):
    """clip.tokenize's rows with a given SimpleTokenizer (clip.tokenize itself uses a module-level one)."""
    import torch

    rows = torch.zeros(len(texts), CONTEXT_LENGTH, dtype=torch.int)
    sot, eot = tokenizer.encoder["<|startoftext|>"], tokenizer.encoder["<|endoftext|>"]
    for i, text in enumerate(texts):
        tokens = [sot, *tokenizer.encode(text), eot][:CONTEXT_LENGTH]
        tokens[-1] = eot
        rows[i, :len(tokens)] = torch.tensor(tokens)
    return rows


def lines_per_second(texts, repeats: int, cold: bool) -> dict[str, float]:
    """Median lines/s of each side on `texts`, runs alternating between the sides."""
    sides = _sides(cold)
    tokenizers = {name: make() for name, (make, _) in sides.items()}
    if not cold:  # fill the caches first
        for name, (_, tokenize) in sides.items():
            tokenize(tokenizers[name], texts)
    seconds = {name: [] for name in sides}
    for _ in range(repeats):
        for name, (make, tokenize) in sides.items():
            tokenizer = make() if cold else tokenizers[name]
            start = time.perf_counter()
            tokenize(tokenizer, texts)
            seconds[name].append(time.perf_counter() - start)
    return {name: len(texts) / statistics.median(times) for name, times in seconds.items()}


def long_word_milliseconds(repeats: int, letters: int = LONG_WORD_LETTERS) -> dict[str, float]:
    """Median ms to encode one word of `letters` random lowercase letters: miniclip and OpenAI, fresh
    tokenizers every run (both cache words; construction not timed), the two sides alternating."""
    import miniclip.tokenizer as ours
    from tests import oracles

    word = "".join(random.Random(0).choices("abcdefghijklmnopqrstuvwxyz", k=letters))
    sides = {"miniclip": ours.Tokenizer, "OpenAI": oracles.openai_simple_tokenizer_module().SimpleTokenizer}
    seconds = {name: [] for name in sides}
    for _ in range(repeats):
        for name, make in sides.items():
            tokenizer = make()
            start = time.perf_counter()
            tokenizer.encode(word)
            seconds[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(times) for name, times in seconds.items()}


def run(repeats: int = 5, lines: int = DEFAULT_LINES) -> list[dict]:
    """Rows for the benchmark table: miniclip's lines/s against each reference, per corpus and cache state."""
    rows = []
    # transformers raises on lone surrogates (which the torture corpus has): every side gets them as U+FFFD
    torture = [replace_lone_surrogates(text) for text in corpus(lines)]
    for corpus_name, texts in [("captions", captions(lines)), ("torture corpus", torture)]:
        for cold in (False, True):
            speed = lines_per_second(texts, repeats, cold)
            ours = speed.pop("miniclip")
            for reference, theirs in speed.items():
                what = f"tokenize {corpus_name}, {'cold' if cold else 'warm'}, vs {reference} (lines/s)"
                rows.append(row(what, ours, theirs, note=f"{lines} lines, truncate=True"))
    ms = long_word_milliseconds(repeats)
    rows.append(row(f"encode one {LONG_WORD_LETTERS:,}-letter word, cold, vs OpenAI (ms)", ms["miniclip"], ms["OpenAI"],
                    lower_is_better=True, note="random a-z; OpenAI's merge loop is quadratic"))
    return rows


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--repeats", type=int, default=5)
    cli.add_argument("--lines", type=int, default=DEFAULT_LINES)
    arguments = cli.parse_args()
    print_table(run(arguments.repeats, arguments.lines), "miniclip tokenizer vs references (ratio > 1: miniclip is faster)")
