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

from .bpe import END_OF_WORD, byte_symbols

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
