"""Byte-level BPE as CLIP uses it: the byte-to-unicode table, pre-tokenisation, and the merge loop.

CLIP's tokenizer is GPT-2's byte-level BPE with two twists (Radford et al. 2021, OpenAI's
`clip/simple_tokenizer.py`):

1. Pre-tokenisation splits lower-cased text into "words" with one regular expression (below); no
   word ever contains whitespace, so whitespace itself is never encoded.
2. The last symbol of every word carries an end-of-word marker `</w>`, so "cat" at the end of a word
   ("cat</w>") and "cat" inside one ("cat" in "catalog") are different tokens.

Each word is first turned into UTF-8 bytes, and each byte into one printable unicode character (the
byte-to-unicode table), so that every string, in any script, is spelled with 256 base symbols and
never needs an "unknown" token. BPE then merges adjacent symbols, lowest-rank merge first, until no
adjacent pair is in the merges list.

This file has no state: the tables it builds are returned to the caller (see `tokenizer.py`).
"""

from __future__ import annotations

import functools
import heapq

import regex

END_OF_WORD = "</w>"
SOT_TEXT = "<|startoftext|>"
EOT_TEXT = "<|endoftext|>"

# OpenAI's pre-tokenisation pattern, alternatives tried left to right at each position:
#   the two special-token strings (so "<|endoftext|>" typed in a caption becomes token 49407),
#   English contractions ('s 't 're 've 'm 'll 'd), runs of letters, ONE digit at a time
#   (numbers are spelled digit by digit), and runs of anything else that is not whitespace.
# OpenAI compiles it with IGNORECASE. The text is already lower-cased, yet the flag still matters for
# a few characters whose case folding differs from lower-casing: "'ſ" (long s) matches the
# contraction 's. We keep the flag so the words are exactly OpenAI's.
_WORD_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
OPENAI_WORDS = regex.compile(_WORD_PATTERN, regex.IGNORECASE)
# transformers runs the same pattern case-sensitively (in Rust's Oniguruma), so "'ſ" is two words there.
# Oniguruma's Unicode tables are also older than the `regex` module's: these code points, letters or
# numbers in `regex` (assigned in Unicode 15-17), are "other" characters to it. Found by running
# CLIPTokenizerFast's pre-tokenizer (tokenizers 0.23) on every code point; tests/test_tokenizer.py checks them.
ONIGURUMA_NOT_LETTERS = [
    (0x558, 0x558), (0x58B, 0x58C), (0x88F, 0x88F), (0xC5C, 0xC5C), (0xCDC, 0xCDC), (0x208F, 0x208F),
    (0x209D, 0x209F), (0xA7CE, 0xA7CF), (0xA7D2, 0xA7D2), (0xA7D4, 0xA7D4), (0xA7DD, 0xA7DD), (0xA7E2, 0xA7E2),
    (0xA7F1, 0xA7F1), (0xAB6C, 0xAB6D), (0x107BB, 0x107BF), (0x10940, 0x10959), (0x10EC5, 0x10EC7),
    (0x10ED9, 0x10EEE), (0x11B0A, 0x11B0A), (0x11DB0, 0x11DDB), (0x11DF1, 0x11DF1), (0x16EA0, 0x16EB8),
    (0x16EBB, 0x16ED3), (0x16FF2, 0x16FF3), (0x187F8, 0x187FF), (0x18CD6, 0x18CDA), (0x18D09, 0x18D20),
    (0x18D80, 0x18DF2), (0x18E00, 0x19191), (0x191A0, 0x191D2), (0x1B123, 0x1B128), (0x1B168, 0x1B168),
    (0x1D6A6, 0x1D6A6), (0x1DF1F, 0x1DF24), (0x1DF2B, 0x1DF81), (0x1DF90, 0x1DF96), (0x1DFCD, 0x1DFFF),
    (0x1E6C0, 0x1E6DE), (0x1E6E0, 0x1E6E2), (0x1E6E4, 0x1E6E5), (0x1E6E7, 0x1E6ED), (0x1E6F0, 0x1E6F4),
    (0x1E6FE, 0x1E6FF), (0x2B73A, 0x2B73F), (0x2B81E, 0x2B81E), (0x2CEA2, 0x2CEAD), (0x323B0, 0x33479),
    (0x3D000, 0x3FC3F),
]
ONIGURUMA_NOT_NUMBERS = [(0x11DE0, 0x11DE9), (0x1246F, 0x1246F), (0x12475, 0x1247F), (0x12550, 0x12686),
                         (0x16FF4, 0x16FF6)]


def char_class(ranges) -> str:
    return "".join(f"\\U{a:08X}-\\U{b:08X}" for a, b in ranges)


# The same pattern with \p{L} and \p{N} as Oniguruma knows them (regex's V1 set difference and union).
_NEWER = char_class(ONIGURUMA_NOT_LETTERS + ONIGURUMA_NOT_NUMBERS)
TRANSFORMERS_WORDS = regex.compile(
    r"""(?V1)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"""
    rf"""|[\p{{L}}--[{char_class(ONIGURUMA_NOT_LETTERS)}]]+|[\p{{N}}--[{char_class(ONIGURUMA_NOT_NUMBERS)}]]"""
    rf"""|[[^\s\p{{L}}\p{{N}}][{_NEWER}]]+"""
)
# transformers then re-splits every word with GPT-2's byte-level pattern. That changes only a
# special-token string that reached pre-tokenisation (e.g. "<|EndOfText|>", lower-cased): it is cut
# into letter runs and runs of other characters ("<|", "endoftext", "|>"). Every other word of the
# pattern above is already a single letter run, digit, contraction or punctuation run.
TRANSFORMERS_SPECIAL_SPLIT = regex.compile(r"""[\p{L}]+|[\p{N}]+|[^\s\p{L}\p{N}]+""")


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """The reversible table byte -> one printable character, as GPT-2 and CLIP define it.

    The 188 bytes that are already visible, non-space Latin-1 characters ('!'..'~', '¡'..'¬',
    '®'..'ÿ') stand for themselves. The other 68 (controls, space, DEL, NBSP, soft hyphen...) are
    shifted to U+0100, U+0101, ... in byte order, so BPE never sees whitespace or control characters.
    Examples: ord('A') -> 'A', 0x20 (space) -> 'Ġ' (U+0120), 0xF0 -> 'ð'.
    """
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in visible}
    shifted = (byte for byte in range(256) if byte not in table)
    for offset, byte in enumerate(shifted):
        table[byte] = chr(256 + offset)
    return dict(sorted(table.items()))


def byte_symbols() -> list[str]:
    """The 256 base symbols in vocabulary order: by code point, which is also byte order of the
    visible bytes followed by the shifted ones (the first id of the vocabulary is '!', id 0)."""
    return sorted(bytes_to_unicode().values())


@functools.cache
def _byte_encoder() -> tuple[str, ...]:
    """bytes_to_unicode() as a tuple indexed by byte value, for fast lookups."""
    table = bytes_to_unicode()
    return tuple(table[byte] for byte in range(256))


def word_to_symbols(word: str) -> list[str]:
    """A pre-tokenised word as byte-level symbols, the last one marked as the end of the word.

    "cat" -> ['c', 'a', 't</w>'];  "é" (bytes C3 A9) -> ['Ã', '©</w>'].
    Lone surrogates (which only reach here in code points that are not valid text) are encoded with
    'surrogatepass' so that nothing crashes and the result is deterministic.
    """
    encoder = _byte_encoder()
    symbols = [encoder[byte] for byte in word.encode("utf-8", errors="surrogatepass")]
    symbols[-1] += END_OF_WORD
    return symbols


def bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply the merges to one word's symbols: always the adjacent pair learnt earliest (lowest rank).

    With ranks {('c','a'): 0, ('ca','t</w>'): 1}: ['c', 'a', 't</w>'] -> ['ca', 't</w>'] -> ['cat</w>'].
    Stops when no adjacent pair is a known merge (or one symbol is left).

    The result is exactly OpenAI's loop (`bpe` in clip/simple_tokenizer.py): find the lowest-rank adjacent
    pair, merge ALL its occurrences in one left-to-right pass (they never overlap: ['a', 'a', 'a'] with
    ('a', 'a') -> ['aa', 'a']), recompute the pairs, repeat. That loop rescans the whole word for every merge,
    so a word of n symbols costs O(n^2) (an 8,000-letter word took seconds). Here the pairs are found once:

    - the symbols are a doubly linked list (`prev`/`after` hold neighbour positions), so a merge is O(1):
      the left symbol becomes the merged one, the right one is unlinked (set to None);
    - a heap holds (rank, position) of every adjacent pair that is a merge. A merge changes the pairs
      around it; rather than finding the old entries in the heap, new ones are pushed and an entry is
      ignored when popped if the pair now at its position no longer has its rank ("lazy invalidation").

    Each merge pushes at most two entries, so a word costs O(n log n). `ranks` maps each pair to its own
    rank (as built from a merges list: one pair per rank), so a rank names a single pair.
    """
    if len(symbols) < 2:
        return symbols
    symbols = list(symbols)  # the caller's list is left alone
    n = len(symbols)
    prev = list(range(-1, n - 1))  # position of the left neighbour; -1: none
    after = list(range(1, n + 1))  # position of the right neighbour; n: none

    def rank_at(i: int):
        """Rank of the pair that starts at position i, or None (not a merge, or i is merged away or last)."""
        if symbols[i] is None or after[i] == n:
            return None
        return ranks.get((symbols[i], symbols[after[i]]))

    heap = [(rank, i) for i, pair in enumerate(zip(symbols, symbols[1:])) if (rank := ranks.get(pair)) is not None]
    heapq.heapify(heap)
    while heap:
        # One pass of OpenAI's loop: every entry of the lowest rank, popped left to right (position breaks
        # ties), before any merge. So the pairs this pass creates wait for the next pass even when they rank
        # lower (possible with an odd merges list), as in OpenAI's loop, which looks for pairs between passes.
        rank, i = heapq.heappop(heap)
        positions = [i]
        while heap and heap[0][0] == rank:
            positions.append(heapq.heappop(heap)[1])
        merged = []
        for i in positions:
            # Skip an entry that is stale (the pair at i changed since it was pushed), a duplicate of one
            # just merged, or overlaps an occurrence merged a moment ago ('a a a': the second 'a a' lost its 'a').
            if rank_at(i) != rank:
                continue
            right = after[i]
            symbols[i] += symbols[right]
            symbols[right] = None
            after[i] = after[right]
            if after[i] != n:
                prev[after[i]] = i
            merged.append(i)
        for i in merged:  # the new pairs on both sides of each merged symbol
            for left in (prev[i], i):
                if left != -1 and (new_rank := rank_at(left)) is not None:
                    heapq.heappush(heap, (new_rank, left))
    return [symbol for symbol in symbols if symbol is not None]
