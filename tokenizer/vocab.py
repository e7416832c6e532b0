"""The vocabulary: OpenAI's merges file (shipped), or a checkpoint's own `vocab.json` + `merges.txt`.

OpenAI's file lists 262,144 merges, of which CLIP uses the first 48,894. The vocabulary is then, in id order:
the 256 byte symbols, the same 256 with the end-of-word marker `</w>`, one token per merge (the two parts
joined), and the special tokens `<|startoftext|>` and `<|endoftext|>`: 49,408 tokens in all.
"""

import functools
import gzip
import hashlib
import json
from importlib import resources
from pathlib import Path

from miniclip.errors import TokenizerError

from .bpe import END_OF_WORD, OPENAI_WORDS, byte_symbols

SHIPPED_FILE = "bpe_simple_vocab_16e6.txt.gz"
SHIPPED_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
SOT_TOKEN, EOT_TOKEN = "<|startoftext|>", "<|endoftext|>"
VOCAB_SIZE = 49408
# 49,408 tokens = 2 x 256 byte symbols + the merges + 2 special tokens
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48,894, which OpenAI writes as 49152 - 256 - 2 (its lines[1 : 49152-256-2+1])


@functools.cache
def shipped_merges() -> tuple[tuple[str, str], ...]:
    """The first NUM_MERGES merges of OpenAI's file shipped with miniclip (checked by its sha256; read once)."""
    return tuple(parse_merges_file(resources.files(__package__).joinpath(SHIPPED_FILE).read_bytes()))


def parse_merges_file(data: bytes, expected_sha256: str = SHIPPED_SHA256) -> list[tuple[str, str]]:
    """The first NUM_MERGES merges of a gzipped merges file, after checking it is the one OpenAI released."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise TokenizerError(f"the merges file {SHIPPED_FILE} has sha256 {digest}, not OpenAI's {expected_sha256}: "
                             "the installation is damaged; reinstall miniclip")
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1 : 1 + NUM_MERGES]]  # line 0 is the "#version: 0.2" header


def vocabulary(merges: list[tuple[str, str]]) -> list[str]:
    """Every token, in id order, built from the merges as OpenAI builds it."""
    # The byte symbols in code-point order: first the bytes that stand for themselves, then the stand-ins
    # from U+0100 (OpenAI lists its byte table in that order; so "!" is id 0 and "!</w>" is 256).
    symbols = sorted(byte_symbols())
    return symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]


def read_hub_files(folder) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(token -> id, merges) from a Hub checkpoint's `vocab.json` and `merges.txt`."""
    folder = Path(folder)
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
        lines = merges_path.read_text(encoding="utf-8").split("\n")
    except (OSError, ValueError) as e:
        raise TokenizerError(f"cannot read the tokenizer files in {folder}: {e}") from e
    start = 1 if lines and lines[0].startswith("#version") else 0
    merges = [tuple(line.split()) for line in lines[start:] if line.strip()]
    bad = next((i for i, m in enumerate(merges) if len(m) != 2), None)
    if bad is not None:
        raise TokenizerError(f"{merges_path} line {bad + start + 1} is not a merge of two symbols: {merges[bad]}")
    return vocab, merges


def write_hub_vocab(folder) -> tuple[Path, Path]:
    """Writes the shipped vocabulary as the Hub has it: `vocab.json` (token -> id) and `merges.txt`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = shipped_merges()
    vocab = {token: i for i, token in enumerate(vocabulary(merges))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return folder / "vocab.json", folder / "merges.txt"


def write_hub_tokenizer(folder, model_max_length: int) -> list[Path]:
    """Writes the tokenizer files of the openai/clip-vit-* repositories, so that transformers' CLIPTokenizer,
    CLIPTokenizerFast and CLIPProcessor load the folder: vocab.json and merges.txt (`write_hub_vocab`),
    tokenizer.json, tokenizer_config.json and special_tokens_map.json. Returns the files written.

    model_max_length: the text tower's positions (77 for every OpenAI model). The special tokens are as the
    Hub has them: `<|startoftext|>` begins a text, `<|endoftext|>` ends it and is also the padding and the
    unknown token, so transformers pads with 49407 where `tokenize` pads with 0 (the model reads neither).
    """
    folder = Path(folder)
    written = list(write_hub_vocab(folder))
    merges = shipped_merges()
    vocab = {token: i for i, token in enumerate(vocabulary(merges))}
    special = {"bos_token": SOT_TOKEN, "eos_token": EOT_TOKEN, "pad_token": EOT_TOKEN, "unk_token": EOT_TOKEN}
    # transformers 5 loads both tokenizers from vocab.json + merges.txt + this file alone; tokenizer.json is
    # for what reads only it (the tokenizers library on its own, transformers.js, Rust and other ports).
    config = {"add_prefix_space": False, "do_lower_case": True, "errors": "replace",
              "model_max_length": model_max_length, "tokenizer_class": "CLIPTokenizer", **special}
    files = {"tokenizer.json": tokenizers_json(vocab, merges), "tokenizer_config.json": config,
             "special_tokens_map.json": special}
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=2, ensure_ascii=False), encoding="utf-8")
        written.append(folder / name)
    return written


def tokenizers_json(vocab: dict[str, int], merges) -> dict:
    """The `tokenizer.json` of the tokenizers library for CLIP: the pipeline transformers' CLIPTokenizerFast
    runs (what `clean="transformers"` reproduces), written as tokenizers 0.23 writes it, except that the
    merges are "a b" strings, the Hub's form, which versions before 0.20 read too (0.20+ writes ["a", "b"])."""
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": vocab[token], "content": token, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True} for token in (SOT_TOKEN, EOT_TOKEN)],
        # clean.py's clean_transformers: NFC, whitespace runs -> one space, lower case (no ftfy, no unescaping)
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"}, {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "}, {"type": "Lowercase"}]},
        # OpenAI's word pattern keeps the words ("invert": the matches are kept, the rest dropped), then the
        # byte-to-unicode table (whose GPT-2 pattern re-splits a word only in odd cases; see bpe.py)
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": OPENAI_WORDS.pattern}, "behavior": "Removed", "invert": True},
            {"type": "ByteLevel", **byte_level}]},
        # <|startoftext|> ... <|endoftext|> around every text
        "post_processor": {"type": "RobertaProcessing", "sep": [EOT_TOKEN, vocab[EOT_TOKEN]],
                           "cls": [SOT_TOKEN, vocab[SOT_TOKEN]], "trim_offsets": False, "add_prefix_space": False},
        "decoder": {"type": "ByteLevel", **byte_level, "add_prefix_space": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": EOT_TOKEN, "continuing_subword_prefix": "",
                  "end_of_word_suffix": END_OF_WORD, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]},
    }
