"""Deterministic text corpora: realistic captions (for speed) and a torture corpus (for exactness).

`captions(n)` are alt-text-like lines; `corpus(n)` mixes them with everything that trips tokenizers up:
HTML entities, curly quotes, mojibake, accents, CJK, Arabic, emoji and ZWJ sequences, full-width forms,
control characters, literal special-token strings, lone surrogates and texts far over 77 tokens.
The tokenizer tests use `corpus(10_000)`; the benchmark uses both.
"""

import random

ADJECTIVES = ["small", "large", "red", "blue", "old", "young", "happy", "wooden", "bright", "dark", "fluffy", "shiny",
              "empty", "busy", "quiet", "green", "tall", "vintage", "modern", "snowy", "rusty", "golden", "striped"]
NOUNS = ["dog", "cat", "man", "woman", "child", "car", "bicycle", "house", "tree", "bird", "horse", "boat", "train",
         "street", "table", "pizza", "cake", "mountain", "beach", "kitchen", "laptop", "guitar", "bridge", "river",
         "giraffe", "elephant", "umbrella", "skateboard", "clock", "bench", "surfer", "airplane", "sandwich"]
VERBS = ["sitting", "standing", "running", "sleeping", "parked", "flying", "walking", "playing", "eating", "riding",
         "lying", "waiting", "jumping", "looking"]
PLACES = ["on a couch", "in the park", "next to a window", "on the street", "under a tree", "near the water",
          "in a kitchen", "at night", "on a sunny day", "in the snow", "by the road", "on a wooden table"]
STARTS = ["a", "an old photo of a", "two", "a close-up of a", "the", "A", "Photo: a", "this is a", "my"]

PIECES = [
    "&amp;", "&lt;b&gt;bold&lt;/b&gt;", "&quot;quoted&quot;", "&#39;", "&#x27;", "&nbsp;", "&amp;amp;", "&copy; 2021",
    "&eacute;t&eacute;", "AT&T", "R&D", "&", "&&", "&notanentity;",
    "don’t", "it’s", "‘single’", "“double”", "rock ’n’ roll", "l'été", "I'M", "we'LL", "she'd", "o'clock",
    "CafÃ©", "â€™", "Ã¼ber", "â€œquotedâ€\x9d", "SchÃ¶n", "Ã©tÃ©",
    "café", "naïve", "résumé", "Ångström", "Straße", "İstanbul", "ĳssel", "Ǆemal", "Ωmega", "ΣΊΣΥΦΟΣ",
    "東京の夜景", "北京", "안녕하세요", "こんにちは世界", "中文字符", "مرحبا بالعالم", "שלום", "नमस्ते", "สวัสดี", "Привет",
    "👨‍👩‍👧‍👦", "🏳️‍🌈", "👍🏽", "🙂", "🐶🐱", "❤️", "🇫🇷", "😀😃😄", "👩🏽‍🚀",
    "ＡＢＣ", "１２３", "ｆｕｌｌ ｗｉｄｔｈ", "！？", "ﬁne", "ﬂower", "㎏", "½", "²", "Ⅻ",
    "\x00", "\x07", "\x1b[31mred\x1b[0m", "\t", "\x0b", "\x0c", "\x1c", "\x1f", "\x7f", "\x85", "\u2028", "\u200b",
    "\u00ad", "\ufeff", "a\r\nb", "\r",
    "<|endoftext|>", "<|startoftext|>", "<|ENDOFTEXT|>", "<|endoftext|", "<|endoftext|><|endoftext|>", "x<|endoftext|>y",
    "3.14159", "$3.50", "100%", "1,000,000", "2021-06-01", "#hashtag", "@user", "http://example.com/a?b=c",
    "...", "!!!", "?!", "--", "(parens)", "[brackets]", "{braces}", "a/b", "e-mail", "C++", "x_y", "~~~",
    "\ud800", "\udfff", "a\ud83d",  # lone surrogates
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝟙𝟚𝟛", "\U0001F600", "\U000E0041", "\U0010FFFD", "\uFFFF", "\u0301e", "e\u0301",
]


def caption(rng: random.Random) -> str:
    text = f"{rng.choice(STARTS)} {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} {rng.choice(PLACES)}"
    if rng.random() < 0.3:
        text += f" with a {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    if rng.random() < 0.3:
        text = text.capitalize() + "."
    return text


def captions(n: int, seed: int = 0) -> list[str]:
    """n realistic captions (mostly lower-case ASCII, ~8-15 tokens each)."""
    rng = random.Random(seed)
    return [caption(rng) for _ in range(n)]


def random_unicode(rng: random.Random, length: int) -> str:
    """Characters from every plane, surrogates and private use included."""
    out = []
    for _ in range(length):
        plane = rng.choice([0, 0, 0, 1, 2, 14, 15, 16])
        out.append(chr(min(plane * 0x10000 + rng.randrange(0x10000), 0x10FFFF)))
    return "".join(out)


def torture(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:  # a caption with odd pieces mixed in
        words = caption(rng).split()
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(PIECES))
        return rng.choice([" ", "", "  "]).join(words) if rng.random() < 0.3 else " ".join(words)
    if kind == 1:  # pieces glued together
        return "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 6)))
    if kind == 2:  # random code points
        return random_unicode(rng, rng.randint(0, 12))
    if kind == 3:  # long: well past 77 tokens
        return " ".join(caption(rng) for _ in range(rng.randint(6, 12)))
    if kind == 4:  # whitespace and emptiness
        return rng.choice(["", " ", "   ", "\n\t ", "\u3000", " a ", "\xa0"])
    return caption(rng).upper() if rng.random() < 0.5 else caption(rng)


def corpus(n: int, seed: int = 0) -> list[str]:
    """n varied strings: a quarter plain captions, the rest torture (deterministic for a seed)."""
    rng = random.Random(seed)
    return [caption(rng) if i % 4 == 0 else torture(rng) for i in range(n)]
