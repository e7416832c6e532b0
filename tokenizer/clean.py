"""Text cleaning before pre-tokenisation: OpenAI's (the default) and transformers' (for bit-for-bit pipelines).

OpenAI's CLIP cleans every text the same way before splitting it into words:
    ftfy.fix_text  (mojibake, curly quotes -> straight, full-width -> ASCII, ligatures, NFC, control chars)
    html.unescape, twice  ("&amp;amp;" -> "&")
    strip, then every run of whitespace -> one space, strip again
    lower-case
transformers' CLIPTokenizer(Fast) does NOT do the first two steps. Its normaliser is NFC, then
`\\s+` -> " ", then lower-casing character by character; the special-token strings are cut out of the
raw text before any of that. `clean_transformers` reproduces its normaliser.

Speed: ftfy is by far the slowest step of the whole tokenizer. `is_plain_ascii` recognises texts on
which ftfy and html.unescape provably do nothing, so `clean_openai` can skip them:
  - every ftfy fix looks for non-ASCII characters (mojibake, quotes, widths, ligatures, line
    separators), HTML entities or control characters; printable ASCII plus tab and newline has none;
  - html.unescape returns its input unchanged when it contains no '&'.
The parity tests (tests/test_tokenizer.py) check this against OpenAI's code on the whole corpus.
"""

from __future__ import annotations

import html
import unicodedata

import ftfy
import regex

# regex's \s is what OpenAI's whitespace_clean uses (Unicode White_Space); str.split() would
# differ, e.g. on the ASCII separators \x1c-\x1f, which str.split() treats as whitespace.
_WHITESPACE_RUN = regex.compile(r"\s+")
# Characters outside printable ASCII + tab + newline, or '&' (the start of an HTML entity).
_NOT_PLAIN = regex.compile(r"[^\t\n\x20-\x25\x27-\x7e]")
_LONE_SURROGATE = regex.compile(r"[\ud800-\udfff]")
_REPLACEMENT_CHARACTER = "\ufffd"
_CAPITAL_SIGMA = "\u03a3"


def is_plain_ascii(text: str) -> bool:
    """True when cleaning is just whitespace collapsing and lower-casing (see the module docstring).

    "A photo of a cat." -> True;  "Tom &amp; Jerry" -> False;  "café" -> False;  "a\\x00b" -> False.
    """
    return text.isascii() and _NOT_PLAIN.search(text) is None


def collapse_whitespace(text: str) -> str:
    """Every run of whitespace -> one space, no space at either end: " a \\t b\\n" -> "a b"."""
    return _WHITESPACE_RUN.sub(" ", text).strip()


def clean_openai(text: str) -> str:
    """OpenAI CLIP's cleaning: "  Tom &amp;amp; JERRY’s  " -> "tom & jerry's"."""
    if is_plain_ascii(text):
        # Only space, tab and newline can be whitespace here, and str.split() splits on exactly those.
        return " ".join(text.split()).lower()
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    # str.strip first, as OpenAI does: it also removes \x1c-\x1f at the ends, which \s does not match.
    return collapse_whitespace(text.strip()).lower()


def replace_lone_surrogates(text: str) -> str:
    """Lone surrogates (not valid Unicode text) -> U+FFFD, what ftfy does on OpenAI's side.

    transformers' Rust tokenizer refuses such strings with an error; we choose this deterministic
    replacement instead so that tokenizing never crashes.
    """
    return _LONE_SURROGATE.sub(_REPLACEMENT_CHARACTER, text)


def lowercase_per_character(text: str) -> str:
    """Lower-case each character on its own, as transformers' normaliser does.

    Python's str.lower() applies the final-sigma rule ("ΟΔΟΣ" -> "οδος"); lower-casing character by
    character never produces the final form ("ΟΔΟΣ" -> "οδοσ"). Only capital sigma is contextual.
    """
    if _CAPITAL_SIGMA not in text:
        return text.lower()
    return "".join(character.lower() for character in text)


def clean_transformers(text: str) -> str:
    """transformers' CLIP normaliser: NFC, whitespace runs -> one space, lower-case per character.

    No strip: pre-tokenisation drops spaces anyway. "Ｃａｆé &amp;" -> "ｃａｆé &amp;" (no ftfy, no unescape).
    """
    text = unicodedata.normalize("NFC", text)
    return lowercase_per_character(_WHITESPACE_RUN.sub(" ", text)).translate(NEWER_LOWERCASE)


# Capital letters newer than Python 3.11's Unicode 14 tables, which transformers' Rust lower-casing (Unicode
# 16) maps: {capital: small}. Found by running CLIPTokenizerFast's normaliser on every code point; on a
# Python that knows them, str.lower() has already mapped them and this changes nothing.
NEWER_LOWERCASE = {
    0x1C89: 0x1C8A, 0xA7CB: 0x0264, 0xA7CC: 0xA7CD, 0xA7CE: 0xA7CF, 0xA7D2: 0xA7D3, 0xA7D4: 0xA7D5,
    0xA7DA: 0xA7DB, 0xA7DC: 0x019B,
    **{c: c + 0x20 for c in range(0x10D50, 0x10D66)},  # Garay
    **{c: c + 0x1B for c in range(0x16EA0, 0x16EB9)},  # Beria Erfe
}
