"""`Tokenizer` (text <-> ids) and `tokenize` (texts -> the 77-position rows CLIP's text tower reads).

The pipeline for one text, in OpenAI's mode (the default):

    "Tom &amp; JERRY’s cat!"
      clean (clean.py)        -> "tom & jerry's cat!"
      split on spaces         -> ["tom", "&", "jerry's", "cat!"]          (chunks)
      words of each chunk     -> ["tom"], ["&"], ["jerry", "'s"], ["cat", "!"]   (bpe.py's pattern)
      BPE + vocabulary        -> [2435, 261, 9164, 568, 2368, 256]  (ids, e.g. "cat</w>" = 2368)

Splitting on spaces first is exact because no alternative of the word pattern can match whitespace,
so words never straddle a space. It is also what makes the tokenizer fast: captions reuse few
chunks, and each chunk's ids are cached, so most texts cost one split and a few dict look-ups.
It also lets `tokenize(..., truncate=True)` stop early: chunks are encoded in order until the row
is full, so a long document costs its first ~75 tokens, not all of them (cleaning is still whole-text).

The cache is bounded in bytes (CACHE_BYTES, counted by `cache_entry_bytes`); when the next entry would
pass the budget it starts over empty. Chunks over MAX_CACHED_CHUNK_CHARS characters are never stored:
they rarely repeat, and a huge one (a pasted file without spaces) would take much of the budget alone.

Thread safety: the only shared mutable state is the chunk cache, a plain dict, and its byte count.
Reads are a lock-free `get` (atomic under the GIL; dicts are also thread-safe in free-threaded
builds). A write follows a miss, i.e. a BPE run that costs far more than a lock, so writes take
`_CACHE_WRITE_LOCK` and the dict and its count always change together. A cached value is exactly what
a miss computes, so a race can at worst compute a chunk twice. Starting over assigns a new dict in one
step: a thread still reading the old one holds a valid dict. Nothing else is shared mid-computation.
"""

from __future__ import annotations

import math
import threading

import regex
import torch

from miniclip.errors import InputTypeError, TokenizerError

from .bpe import (
    END_OF_WORD, EOT_TEXT, OPENAI_WORDS, SOT_TEXT, TRANSFORMERS_SPECIAL_SPLIT, TRANSFORMERS_WORDS, bpe,
    bytes_to_unicode, word_to_symbols,
)
from .clean import clean_openai, clean_transformers, replace_lone_surrogates
from .vocab import read_hub_files, shipped_merges, vocabulary

SOT = 49406  # <|startoftext|>: first position of every row
EOT = 49407  # <|endoftext|>: ends the text; CLIP's text features are read at this position
PAD = 0  # OpenAI pads rows with 0 (which is also the id of "!": only EOT marks where a text ends)
CONTEXT_LENGTH = 77  # positions of CLIP's text transformer
CLEAN_MODES = ("openai", "transformers")
CACHE_BYTES = 32 * 2**20  # the chunk cache's budget, as counted by cache_entry_bytes (~150,000 caption chunks)
MAX_CACHED_CHUNK_CHARS = 1_000  # longer chunks (a pasted file, a run of one letter) are encoded every time
_CACHE_ENTRY_OVERHEAD = 200  # bytes of one entry besides its characters and ids: str and tuple headers, dict slot
# One lock for the cache writes of every Tokenizer: a lock per instance would stop tokenizers from being
# pickled (to DataLoader workers, say), and writes are rare next to reads (see the module docstring).
_CACHE_WRITE_LOCK = threading.Lock()
_ERROR_TEXT_PREVIEW = 60  # characters of an offending text quoted in error messages

# transformers cuts the exact special-token strings out of the raw text before normalising anything.
_SPECIAL_TEXTS = regex.compile(r"(<\|startoftext\|>|<\|endoftext\|>)")


class Tokenizer:
    """Text <-> token ids with OpenAI CLIP's byte-level BPE.

    vocab, merges: a checkpoint's token -> id table and merges list (see `from_hub_files`);
        both None (the default): OpenAI's shipped merges file.
    clean: "openai" (default: what every CLIP checkpoint was trained with) or "transformers"
        (bit for bit what transformers' CLIPTokenizerFast does: no ftfy, no HTML unescaping).

    >>> Tokenizer().encode("Hello World!")
    [3306, 1002, 256]
    """

    def __init__(self, vocab: dict[str, int] | None = None, merges=None, clean: str = "openai"):
        if clean not in CLEAN_MODES:
            raise TokenizerError(f"clean={clean!r}; expected one of {CLEAN_MODES}")
        if (vocab is None) != (merges is None):
            raise TokenizerError("pass both vocab and merges (a checkpoint's vocab.json and merges.txt), or neither")
        if merges is None:
            merges = shipped_merges()
            vocab = {token: i for i, token in enumerate(vocabulary(merges))}
        self.clean = clean
        self.encoder = dict(vocab)
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.ranks = {tuple(merge): rank for rank, merge in enumerate(merges)}
        self.special_ids = {SOT_TEXT: self._id(SOT_TEXT), EOT_TEXT: self._id(EOT_TEXT)}
        self.byte_of_symbol = {symbol: byte for byte, symbol in enumerate(byte_symbols_by_byte())}
        self._words = OPENAI_WORDS if clean == "openai" else TRANSFORMERS_WORDS
        self._chunk_cache: dict[str, tuple[int, ...]] = {}
        self._cache_bytes = 0  # sum of cache_entry_bytes over the cache; changed only under _CACHE_WRITE_LOCK

    @classmethod
    def from_hub_files(cls, folder, clean: str = "openai") -> "Tokenizer":
        """From a checkpoint folder's `vocab.json` + `merges.txt` (the Hub's files)."""
        vocab, merges = read_hub_files(folder)
        return cls(vocab, merges, clean)

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str, max_ids: int | None = None) -> list[int]:
        """Token ids of `text`, without <|startoftext|> and <|endoftext|>.

        max_ids: return only the first `max_ids` ids, i.e. `encode(text)[:max_ids]`, but without encoding the
            chunks after the one that reaches the count (what `tokenize(..., truncate=True)` relies on).
        """
        if not isinstance(text, str):
            raise InputTypeError(f"text is a {type(text).__name__}; expected a string")
        if max_ids is not None and max_ids < 0:
            raise TokenizerError(f"max_ids={max_ids}; expected a count >= 0, or None for all the ids")
        limit = math.inf if max_ids is None else max_ids
        if self.clean == "openai":
            return self._chunks_to_ids(clean_openai(text), limit)[:max_ids]
        # transformers: special-token strings are found in the raw text, the pieces between them are normalised.
        ids = []
        for i, piece in enumerate(_SPECIAL_TEXTS.split(replace_lone_surrogates(text))):
            if len(ids) >= limit:
                break
            if i % 2:  # odd pieces are the separators, i.e. the special-token strings themselves
                ids.append(self.special_ids[piece])
            else:
                ids += self._chunks_to_ids(clean_transformers(piece), limit - len(ids))
        return ids[:max_ids]

    def _chunks_to_ids(self, cleaned: str, limit: float = math.inf) -> list[int]:
        """Ids of cleaned text (whitespace already collapsed to single spaces), chunk by cached chunk,
        stopping once `limit` ids are collected (the last chunk may take the count past it)."""
        ids, cache = [], self._chunk_cache
        for chunk in cleaned.split(" "):
            if len(ids) >= limit:
                break
            chunk_ids = cache.get(chunk)
            if chunk_ids is None:
                chunk_ids = self._encode_chunk(chunk)
            ids += chunk_ids
        return ids

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        """Ids of one space-free chunk ("jerry's" -> words "jerry", "'s"), stored in the cache unless too long."""
        ids = []
        for word in self._words.findall(chunk):
            if word in self.special_ids:
                if self.clean == "openai":  # OpenAI's pattern matches them as words of their own
                    ids.append(self.special_ids[word])
                    continue
                # transformers only honours the exact strings (handled in encode); one that appears after
                # normalisation (e.g. from "<|EndOfText|>") is re-split like GPT-2 does: "<|", "endoftext", "|>"
                for part in TRANSFORMERS_SPECIAL_SPLIT.findall(word):
                    ids += self._word_ids(part)
                continue
            ids += self._word_ids(word)
        ids = tuple(ids)
        if len(chunk) <= MAX_CACHED_CHUNK_CHARS:
            self._cache_store(chunk, ids)
        return ids

    def _cache_store(self, chunk: str, ids: tuple[int, ...]) -> None:
        size = cache_entry_bytes(chunk, ids)
        with _CACHE_WRITE_LOCK:
            if chunk in self._chunk_cache:  # another thread stored it meanwhile: count it once
                return
            if self._cache_bytes + size > CACHE_BYTES:  # over budget: start over (endless unique input)
                self._chunk_cache = {}  # one assignment: threads holding the old dict keep a valid one
                self._cache_bytes = 0
            self._chunk_cache[chunk] = ids
            self._cache_bytes += size

    def _word_ids(self, word: str) -> list[int]:
        """BPE of one pre-tokenised word: "cat" -> ["cat</w>"] -> [2368]."""
        return [self._id(token) for token in bpe(word_to_symbols(word), self.ranks)]

    def _id(self, token: str) -> int:
        try:
            return self.encoder[token]
        except KeyError:
            raise TokenizerError(f"token {token!r} is not in the vocabulary: vocab.json and merges.txt "
                                 "do not belong together") from None

    # ------------------------------------------------------------------ decoding

    def decode(self, ids) -> str:
        """Text of token ids (ints, a list or a 1-D tensor); words are separated by one space.

        Every `</w>` ends a word, and so does a special token. What cleaning changed (case, entities,
        whitespace) cannot come back, and neither can whether two words touched: "cat!" and "cat !"
        have the same ids. So decode(encode(t)) is the cleaned text with one space between words,
        which is the cleaned text itself for ordinary captions ("a photo of a cat").
        """
        words, current = [], []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            token = self.decoder.get(int(i))
            if token is None:
                raise TokenizerError(f"id {int(i)} is not in the vocabulary (ids 0..{len(self.decoder) - 1})")
            if token in self.special_ids:
                words += [self._bytes_to_text(current), token] if current else [token]
                current = []
            elif token.endswith(END_OF_WORD):
                current.append(token[: -len(END_OF_WORD)])
                words.append(self._bytes_to_text(current))
                current = []
            else:
                current.append(token)
        if current:  # ids that stop mid-word
            words.append(self._bytes_to_text(current))
        return " ".join(words)

    def _bytes_to_text(self, symbols: list[str]) -> str:
        """Byte symbols -> text; invalid UTF-8 (ids cut mid-character) becomes U+FFFD."""
        data = bytes(self.byte_of_symbol[symbol] for symbol in "".join(symbols))
        return data.decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ rows for the model

    def __call__(self, texts, context_length: int = CONTEXT_LENGTH, truncate: bool = False) -> torch.Tensor:
        return self.tokenize(texts, context_length, truncate)

    def tokenize(self, texts, context_length: int = CONTEXT_LENGTH, truncate: bool = False) -> torch.Tensor:
        """Rows of <|startoftext|>, the tokens, <|endoftext|>, zero padding: LongTensor [n, context_length].

        Exactly OpenAI's `clip.tokenize` (which returns int32; we return int64, what embeddings index with).
        """
        texts = check_texts(texts)
        if context_length < 2:
            raise TokenizerError(f"context_length={context_length}: a row needs at least 2 positions, "
                                 "for <|startoftext|> and <|endoftext|>")
        room = context_length - 2  # text ids between <|startoftext|> and <|endoftext|>
        flat = []  # all rows, one after the other: one tensor conversion at the end
        for index, text in enumerate(texts):
            # Truncating keeps the first `room` ids and never encodes the rest of the text. This is OpenAI's
            # row: [SOT, *ids, EOT] cut to context_length, with EOT written over the last position.
            ids = self.encode(text, max_ids=room if truncate else None)
            if len(ids) > room:  # only when not truncating: the error says the full length
                raise too_long_error(index, text, len(ids) + 2, context_length)
            flat += [SOT, *ids, EOT]
            flat += [PAD] * (room - len(ids))
        return torch.tensor(flat, dtype=torch.long).view(len(texts), context_length)


def cache_entry_bytes(chunk: str, ids: tuple[int, ...]) -> int:
    """Approximate memory of one chunk-cache entry, the unit of CACHE_BYTES: an upper bound, by design.

    4 bytes a character (the widest str storage, so no script can overrun the budget; ASCII takes 1), 8 an
    id (a pointer in the tuple: the int objects are the vocabulary's own), and 200 for the rest: the str
    and tuple headers (at most 76 + 40 bytes) and the dict slot (~50 at the dict's usual load).
    "photo" (1 id): 200 + 20 + 8 = 228 counted, about 150 real.
    """
    return _CACHE_ENTRY_OVERHEAD + 4 * len(chunk) + 8 * len(ids)


def byte_symbols_by_byte() -> list[str]:
    """The byte symbols indexed by byte value (symbol of byte b at position b)."""
    table = bytes_to_unicode()
    return [table[byte] for byte in range(256)]


def check_texts(texts) -> list[str]:
    """A string or a list/tuple of strings -> a list of strings; anything else an InputTypeError."""
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, (list, tuple)):
        raise InputTypeError(f"texts is a {type(texts).__name__}; expected a string or a list of strings")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputTypeError(f"texts[{index}] is a {type(text).__name__}; expected a string")
    return list(texts)


def too_long_error(index: int, text: str, n_tokens: int, context_length: int) -> TokenizerError:
    preview = repr(text[:_ERROR_TEXT_PREVIEW]) + ("..." if len(text) > _ERROR_TEXT_PREVIEW else "")
    return TokenizerError(
        f"text {index} is {n_tokens} tokens long (with <|startoftext|> and <|endoftext|>), more than "
        f"context_length={context_length}: {preview}. Pass truncate=True to cut it "
        "(the last position then holds <|endoftext|>)")


def attention_mask(input_ids: torch.Tensor) -> torch.Tensor:
    """1 for every position up to and including each row's final <|endoftext|>, 0 for the padding after.

    The padding id 0 is also the token "!", so the mask cannot be `ids != 0`; but the final EOT is the
    last non-zero id of a row, and only padding follows it. A literal "<|endoftext|>" inside the text
    is an earlier EOT and stays inside the mask. Same shape as `input_ids`, int64 like transformers'.
    """
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
    last_real = torch.where(input_ids != PAD, positions, -1).amax(dim=-1, keepdim=True)
    return (positions <= last_real).long()


_DEFAULT_TOKENIZERS: dict[str, Tokenizer] = {}
_DEFAULT_LOCK = threading.Lock()


def default_tokenizer(clean: str = "openai") -> Tokenizer:
    """One shared tokenizer per cleaning mode, built on first use (reading the merges takes ~0.2 s)."""
    tokenizer = _DEFAULT_TOKENIZERS.get(clean)
    if tokenizer is None:
        with _DEFAULT_LOCK:  # two threads starting together build it once
            if clean not in _DEFAULT_TOKENIZERS:
                _DEFAULT_TOKENIZERS[clean] = Tokenizer(clean=clean)
            tokenizer = _DEFAULT_TOKENIZERS[clean]
    return tokenizer


def tokenize(texts, context_length: int = CONTEXT_LENGTH, truncate: bool = False,
             clean: str = "openai") -> torch.Tensor:
    """OpenAI's `clip.tokenize`: a string or list of strings -> LongTensor [n, context_length].

    >>> tokenize("Hello World!")[0, :6].tolist()
    [49406, 3306, 1002, 256, 49407, 0]
    """
    if clean not in CLEAN_MODES:
        raise TokenizerError(f"clean={clean!r}; expected one of {CLEAN_MODES}")
    return default_tokenizer(clean).tokenize(texts, context_length, truncate)
