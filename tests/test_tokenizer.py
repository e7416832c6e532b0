"""The tokenizer against its references: OpenAI's own code (every id, every truncation) and transformers'
CLIPTokenizerFast (the clean="transformers" switch), plus worked examples with literal ids.

The corpus is `benchmarks.text_corpus.corpus(10_000)`: captions, entities, curly quotes, mojibake, accents,
CJK, Arabic, emoji and ZWJ sequences, full-width forms, control characters, special-token strings, lone
surrogates, random code points from every plane, texts far over 77 tokens. The reference for every id is
OpenAI's `clip/simple_tokenizer.py` and `clip.tokenize`, loaded by tests/oracles.py.
"""

import random
import string
import sys
import threading
import unicodedata

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.text_corpus import captions, corpus
from miniclip.errors import InputTypeError, TokenizerError
import miniclip.tokenizer.tokenizer as tokenizer_module
from miniclip.tokenizer import CONTEXT_LENGTH, EOT, SOT, Tokenizer, attention_mask, tokenize, write_hub_vocab
from miniclip.tokenizer.bpe import bpe, word_to_symbols
from miniclip.tokenizer.clean import clean_openai, is_plain_ascii, replace_lone_surrogates
from miniclip.tokenizer.vocab import SHIPPED_FILE, parse_merges_file
from oracles import (
    hub_clip_tokenizer_fast, openai_encode, openai_simple_tokenizer, openai_simple_tokenizer_module, openai_tokenize,
    write_hub_vocab_files,
)

CORPUS_SIZE = 10_000


@pytest.fixture(scope="module")
def texts():
    return corpus(CORPUS_SIZE)


@pytest.fixture(scope="module")
def openai_ids(texts):
    return [openai_encode(text) for text in texts]


def first_mismatches(texts, expected, got, limit=5):
    """A readable failure message: the first few texts whose ids differ."""
    bad = [(t, e, g) for t, e, g in zip(texts, expected, got) if e != g]
    lines = [f"{len(bad)} of {len(texts)} texts differ; first:"]
    lines += [f"  {t!r}\n    expected {e}\n    got      {g}" for t, e, g in bad[:limit]]
    return "\n".join(lines), len(bad)


# -----------------------------------------------------------------------------
# Exactness against OpenAI


def test_encode_equals_openai_on_the_corpus(texts, openai_ids):
    ours = Tokenizer()
    message, n_bad = first_mismatches(texts, openai_ids, [ours.encode(text) for text in texts])
    assert n_bad == 0, message


def test_rows_and_truncation_equal_clip_tokenize_on_the_corpus(texts):
    ours = tokenize(texts, truncate=True)
    theirs = openai_tokenize(texts, truncate=True)
    assert ours.dtype == torch.long and ours.shape == (CORPUS_SIZE, CONTEXT_LENGTH)
    differ = (ours != theirs.long()).any(dim=1).nonzero().flatten().tolist()
    assert not differ, f"rows differ for texts {differ[:5]}: {[texts[i] for i in differ[:3]]!r}"


def test_too_long_exactly_when_clip_tokenize_refuses(texts, openai_ids):
    # clip.tokenize raises when SOT + tokens + EOT > context_length; so must we, and on no other text.
    context_length = 16  # short, so that many corpus texts are too long
    for index, (text, ids) in enumerate(zip(texts[:2000], openai_ids)):
        too_long = len(ids) + 2 > context_length
        if too_long:
            with pytest.raises(RuntimeError):
                openai_tokenize(text, context_length=context_length)
            with pytest.raises(TokenizerError):
                tokenize(text, context_length=context_length)
        else:
            assert tokenize(text, context_length=context_length).tolist() == \
                openai_tokenize(text, context_length=context_length).tolist(), (index, text)


def test_plain_ascii_fast_path_is_openai_cleaning(texts):
    # clean_openai skips ftfy and html.unescape on plain ASCII; OpenAI's own cleaning must agree on those texts.
    oracle = openai_simple_tokenizer_module()
    plain = [t for t in texts + captions(2000) + [" A\tB\nC ", "", "   ", "x'S", "~!@#$%^*()_+{}|:\"<>?"]
             if is_plain_ascii(t)]
    assert len(plain) > 2000
    for text in plain:
        assert clean_openai(text) == oracle.whitespace_clean(oracle.basic_clean(text)).lower(), repr(text)


# -----------------------------------------------------------------------------
# The merge loop against OpenAI's simple one


def simple_bpe(symbols, ranks):
    """OpenAI's merge loop (clip/simple_tokenizer.py's `bpe`), the reference for miniclip's heap-based `bpe`:
    take the lowest-rank adjacent pair, merge all its occurrences left to right, look again. O(n^2) a word."""
    while len(symbols) > 1:
        best = min(zip(symbols, symbols[1:]), key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            return symbols
        merged, i = [], 0
        while i < len(symbols):
            if tuple(symbols[i:i + 2]) == best:
                merged.append(best[0] + best[1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def ranks_of(merges):
    return {tuple(merge): rank for rank, merge in enumerate(merges)}  # as Tokenizer builds them


@pytest.mark.parametrize("word, merges, expected", [
    ("cat", [("c", "a"), ("ca", "t")], ["cat"]),
    # occurrences never overlap, and are taken from the left
    ("aaa", [("a", "a")], ["aa", "a"]),
    ("aaaa", [("a", "a")], ["aa", "aa"]),
    ("aaaaa", [("a", "a"), ("aa", "aa")], ["aaaa", "a"]),
    # ('aa', 'a') ranks lower than ('a', 'a'), but appears only once the whole pass of ('a', 'a') is done
    # (merging each new pair as soon as it appears would give ['aaa', 'aa'])
    ("aaaaa", [("aa", "a"), ("a", "a")], ["aa", "aaa"]),
    ("abab", [("b", "a")], ["a", "ba", "b"]),
    ("ab", [("x", "y")], ["a", "b"]),
    ("a", [("a", "a")], ["a"]),
    ("", [("a", "a")], []),
])
def test_bpe_worked_examples(word, merges, expected):
    assert bpe(list(word), ranks_of(merges)) == expected == simple_bpe(list(word), ranks_of(merges))


SMALL_ALPHABET = st.sampled_from(["ab", "abc", "a", "xyz"])


@settings(derandomize=True, max_examples=1000, deadline=None)
@given(data=st.data())
def test_bpe_equals_the_simple_loop_on_random_merges(data):
    # Tiny alphabets make repeats ('aaaa', 'abab') and long merge chains common; merge parts of 1-3 letters
    # make merges whose symbols exist, and others that never do; duplicates keep the last rank, like Tokenizer.
    alphabet = data.draw(SMALL_ALPHABET)
    part = st.text(alphabet=alphabet, min_size=1, max_size=3)
    merges = data.draw(st.lists(st.tuples(part, part), max_size=25))
    word = data.draw(st.text(alphabet=alphabet, max_size=40))
    assert bpe(list(word), ranks_of(merges)) == simple_bpe(list(word), ranks_of(merges)), (word, merges)


def test_bpe_leaves_the_callers_list_alone():
    symbols = ["c", "a", "t</w>"]
    assert bpe(symbols, Tokenizer().ranks) == ["cat</w>"] and symbols == ["c", "a", "t</w>"]


def test_bpe_of_long_words_equals_the_simple_loop():
    # Real merges on words of a few hundred letters: many passes, each with many occurrences.
    ranks, rng = Tokenizer().ranks, random.Random(0)
    for word in ["a" * 300, "ab" * 150, "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(500)),
                 "".join(rng.choice("аб猫😀é") for _ in range(200))]:
        symbols = word_to_symbols(word)
        assert bpe(symbols, ranks) == simple_bpe(symbols, ranks), word[:20]


# -----------------------------------------------------------------------------
# Known answers, worked out by hand
#
# Ids of the vocabulary (vocab.py): 0..255 are the 256 byte symbols in code-point order, starting at "!" (byte
# 33), so a printable ASCII character c has id ord(c) - 33; 256..511 are the same symbols with "</w>" (end of
# word), so a one-character word c is 256 + ord(c) - 33; then merge k (k = 1, 2, ... counting the lines of
# bpe_simple_vocab_16e6.txt.gz after its header) is id 511 + k; 49406, 49407 are <|startoftext|>, <|endoftext|>.

KNOWN_ANSWERS = [
    # OpenAI's README: clip.tokenize("Hello World!") = [49406, 3306, 1002, 256, 49407, 0, ...].
    ("Hello World!", [3306, 1002, 256]),
    # "&amp;" is unescaped to "&" (byte 38): the one-character word "&</w>" = 256 + 38 - 33 = 261.
    # "fish</w>" is merge 2248 ("f ish</w>", file line 2249) -> 2759; "chips</w>" is merge 8344 -> 8855.
    ("fish &amp; chips", [2759, 261, 8855]),
    # "&amp;amp;" is unescaped twice: also "&".
    ("&amp;amp;", [261]),
    # ftfy straightens the curly apostrophe: "don't" -> words "don", "'t" (the contraction is a word of its own);
    # "don</w>" is merge 336 ("d on</w>") -> 847, "'t</w>" is merge 202 ("' t</w>") -> 713.
    ("don’t", [847, 713]),
    # 😀 is U+1F600, UTF-8 F0 9F 98 80 -> byte symbols "ð" "Ł" "ĺ" "Ģ" (bytes 0x9F, 0x98, 0x80 are not printable
    # Latin-1 and map to U+0141, U+013A, U+0122); the merges join them up to "ðŁĺĢ</w>", merge 6823 -> 7334.
    ("😀", [7334]),
    # A literal "<|endoftext|>" in the text is matched by OpenAI's pattern as a word of its own -> 49407.
    # "a</w>" = 256 + 97 - 33 = 320, "b</w>" = 321.
    ("a<|endoftext|>b", [320, 49407, 321]),
    # ftfy maps full-width letters to ASCII: "ＡＢＣ" -> "abc"; "abc</w>" is merge 4823 ("ab c</w>") -> 5334.
    ("ＡＢＣ", [5334]),
    # ftfy fixes the mojibake "CafÃ©" -> "Café" -> "café"; and the ligature "ﬁ" -> "fi": "fine</w>" = merge 3286.
    ("ﬁne", [3797]),
    # Nothing to encode.
    ("", []),
    (" \t\n ", []),
]


@pytest.mark.parametrize("text, ids", KNOWN_ANSWERS)
def test_known_answers(text, ids):
    assert Tokenizer().encode(text) == ids
    row = tokenize(text)[0].tolist()
    assert row == [SOT, *ids, EOT] + [0] * (CONTEXT_LENGTH - len(ids) - 2)


def test_hello_world_row_as_published():
    assert tokenize("Hello World!")[0, :6].tolist() == [49406, 3306, 1002, 256, 49407, 0]


# -----------------------------------------------------------------------------
# Vocabulary files


@pytest.mark.parametrize("writer", ["oracles.write_hub_vocab_files", "miniclip.write_hub_vocab"])
def test_hub_files_give_the_same_ids(writer, tmp_path, texts, openai_ids):
    (write_hub_vocab_files if writer.startswith("oracles") else write_hub_vocab)(tmp_path)
    from_hub = Tokenizer.from_hub_files(tmp_path)
    message, n_bad = first_mismatches(texts, openai_ids, [from_hub.encode(text) for text in texts])
    assert n_bad == 0, message


def test_our_hub_files_hold_openai_tables(tmp_path):
    import json

    write_hub_vocab(tmp_path)
    oracle = openai_simple_tokenizer()
    assert json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8")) == oracle.encoder
    lines = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2"
    assert [tuple(line.split(" ")) for line in lines[1:]] == sorted(oracle.bpe_ranks, key=oracle.bpe_ranks.get)


def test_damaged_merges_file_is_refused():
    from importlib import resources

    data = resources.files("miniclip.tokenizer").joinpath(SHIPPED_FILE).read_bytes()
    assert len(parse_merges_file(data)) == 48_894
    with pytest.raises(TokenizerError, match="sha256"):
        parse_merges_file(data[:-1] + bytes([data[-1] ^ 1]))


def test_bad_hub_files_are_refused(tmp_path):
    write_hub_vocab(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\ni n\nthree parts here\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="line 3"):
        Tokenizer.from_hub_files(tmp_path)
    with pytest.raises(TokenizerError, match="cannot read"):
        Tokenizer.from_hub_files(tmp_path / "missing")


# -----------------------------------------------------------------------------
# transformers' cleaning


def unknown_to_python(text: str) -> bool:
    # Python 3.11's Unicode database is version 14; transformers' Rust code knows newer characters.
    return any(unicodedata.category(c) == "Cn" for c in text)


def test_transformers_switch_equals_clip_tokenizer_fast(texts, tmp_path):
    reference = hub_clip_tokenizer_fast(tmp_path)
    # transformers raises on lone surrogates; our documented choice is to read them as U+FFFD first.
    compared = [replace_lone_surrogates(t) for t in texts]
    expected = reference(compared)["input_ids"]  # bos + tokens + eos
    ours = Tokenizer(clean="transformers")
    got = [[SOT, *ours.encode(t), EOT] for t in compared]
    message, n_bad = first_mismatches(compared, expected, got)
    assert n_bad == 0, message
    assert sum(map(unknown_to_python, compared)) > 500  # the corpus does hold characters Python cannot classify


def test_newer_lowercase_table_matches_the_rust_normaliser(tmp_path):
    from miniclip.tokenizer.clean import NEWER_LOWERCASE, clean_transformers

    normalizer = hub_clip_tokenizer_fast(tmp_path).backend_tokenizer.normalizer
    for capital, small in NEWER_LOWERCASE.items():
        assert normalizer.normalize_str(chr(capital)) == chr(small) == clean_transformers(chr(capital))


def test_oniguruma_letter_tables_match_the_rust_pre_tokenizer(tmp_path):
    # Every code point in the tables is a letter or number to `regex` but "other" to the Rust engine:
    # "a" + c + "a" is three words there (a letter would make it one), and so it is for our pattern.
    from miniclip.tokenizer.bpe import ONIGURUMA_NOT_LETTERS, ONIGURUMA_NOT_NUMBERS, TRANSFORMERS_WORDS

    pre_tokenizer = hub_clip_tokenizer_fast(tmp_path).backend_tokenizer.pre_tokenizer
    for start, end in ONIGURUMA_NOT_LETTERS + ONIGURUMA_NOT_NUMBERS:
        for code in {start, (start + end) // 2, end}:
            text = f"a{chr(code)}{chr(code)}a"
            theirs = [piece for piece, _ in pre_tokenizer.pre_tokenize_str(text)]
            assert len(theirs) == 3 and TRANSFORMERS_WORDS.findall(text) == ["a", chr(code) * 2, "a"], hex(code)


def test_transformers_switch_differs_from_openai_where_documented():
    ours, theirs = Tokenizer(clean="transformers"), Tokenizer()
    for text in ["Tom &amp; Jerry", "don’t", "ＡＢＣ", "ΟΔΟΣ", "<|EndOfText|>"]:
        assert ours.encode(text) != theirs.encode(text), text
    assert tokenize("a cat", clean="transformers").tolist() == tokenize("a cat").tolist()


# -----------------------------------------------------------------------------
# decode


def test_decode_gives_back_the_cleaned_text(texts):
    oracle = openai_simple_tokenizer_module()
    pattern = openai_simple_tokenizer().pat
    ours = Tokenizer()
    for text in texts:
        cleaned = oracle.whitespace_clean(oracle.basic_clean(text)).lower()
        # word boundaries come back as single spaces ("cat!" -> "cat !"): ids do not record whether words touched
        assert ours.decode(ours.encode(text)) == " ".join(pattern.findall(cleaned)), repr(text)
    plain_words = [c for c in captions(300) if c.replace(" ", "").isalnum()]
    assert len(plain_words) > 100
    for caption in plain_words:  # captions of plain words: exactly the cleaned text
        assert ours.decode(ours.encode(caption)) == clean_openai(caption)


def test_decode_accepts_a_tensor_and_refuses_unknown_ids():
    ours = Tokenizer()
    assert ours.decode(torch.tensor([3306, 1002, 256])) == "hello world !"
    assert ours.decode([49406, 320, 49407]) == "<|startoftext|> a <|endoftext|>"
    with pytest.raises(TokenizerError, match="49408"):
        ours.decode([320, 49408])


# -----------------------------------------------------------------------------
# Inputs, errors, rows and the mask


@pytest.mark.parametrize("bad, words", [
    (42, ["int"]), (None, ["NoneType"]), (b"a cat", ["bytes"]), ({"a cat"}, ["set"]),
    (["ok", 3], ["texts[1]", "int"]), (("ok", "fine", None), ["texts[2]", "NoneType"]),
])
def test_type_errors(bad, words):
    with pytest.raises(InputTypeError) as error:
        tokenize(bad)
    assert isinstance(error.value, TypeError)
    for word in words:
        assert word in str(error.value)
    with pytest.raises(TypeError):
        Tokenizer().encode(b"bytes")


def test_too_long_message_says_which_text_how_long_and_what_to_do():
    with pytest.raises(TokenizerError) as error:
        tokenize(["short", "word " * 100])
    message = str(error.value)
    for part in ["text 1", "102 tokens", "context_length=77", "truncate=True"]:
        assert part in message, message


def test_truncate_keeps_the_first_tokens_and_ends_with_eot():
    ids = Tokenizer().encode("word " * 100)
    row = tokenize("word " * 100, truncate=True)[0].tolist()
    assert row == [SOT, *ids[:CONTEXT_LENGTH - 2], EOT]
    assert tokenize("a " * 75, truncate=False).shape == (1, 77)  # exactly full: 75 tokens + SOT + EOT
    assert tokenize(["a cat"] * 3, context_length=3, truncate=True).tolist() == [[SOT, 320, EOT]] * 3  # "a</w>" = 320


@pytest.mark.parametrize("clean", ["openai", "transformers"])
def test_truncated_rows_equal_full_encode_then_cut(texts, clean):
    # Truncation stops encoding at the chunk that fills the row; the rows must be those of encoding everything.
    ours, whole = Tokenizer(clean=clean), Tokenizer(clean=clean)
    batch = [replace_lone_surrogates(t) for t in texts[:3000]] if clean == "transformers" else texts
    full = [whole.encode(t) for t in batch]
    for context_length in (2, 3, 16, CONTEXT_LENGTH):
        rows = ours.tokenize(batch, context_length=context_length, truncate=True).tolist()
        for text, ids, row in zip(batch, full, rows):
            kept = ids[:context_length - 2]
            assert row == [SOT, *kept, EOT] + [0] * (context_length - 2 - len(kept)), (context_length, text)
    for text, ids in zip(batch[:500], full):
        for max_ids in (0, 1, 5, 100):
            assert ours.encode(text, max_ids=max_ids) == ids[:max_ids], (max_ids, text)


def distinct_words(n: int, prefix: str = "photo") -> list[str]:
    """n (at most 26^3) different words: `prefix` and 0..n-1 spelt in three base-26 letters ('photoaab')."""
    letters = string.ascii_lowercase
    return [prefix + letters[i // 676 % 26] + letters[i // 26 % 26] + letters[i % 26] for i in range(n)]


@pytest.mark.parametrize("clean", ["openai", "transformers"])
def test_truncate_encodes_only_the_chunks_it_keeps(clean):
    # Every chunk (here one word) gives at least one id, so a full row needs at most 75 chunks. Encoding
    # the whole text first would have put all 10,000 words in the chunk cache.
    text = " ".join(distinct_words(10_000))
    ours = Tokenizer(clean=clean)
    row = ours.tokenize(text, truncate=True)[0].tolist()
    assert 0 < len(ours._chunk_cache) <= CONTEXT_LENGTH - 2
    assert row == [SOT, *Tokenizer(clean=clean).encode(text)[:CONTEXT_LENGTH - 2], EOT]
    assert len(ours.encode(text)) > 10_000 and len(ours._chunk_cache) == 10_000  # untruncated: every chunk


def test_encode_refuses_a_negative_max_ids():
    with pytest.raises(TokenizerError, match="max_ids"):
        Tokenizer().encode("a cat", max_ids=-1)


def cached_bytes(tokenizer):
    return sum(tokenizer_module.cache_entry_bytes(chunk, ids) for chunk, ids in tokenizer._chunk_cache.items())


def test_chunk_cache_stays_within_its_byte_budget(monkeypatch):
    # A small budget (the real one is 32 MiB) so that a few hundred long unique chunks fill it several times.
    budget = 50_000
    monkeypatch.setattr(tokenizer_module, "CACHE_BYTES", budget)
    ours, reference = Tokenizer(), Tokenizer()
    chunks = [word * 8 for word in distinct_words(400)]  # 64 letters, ~0.8 KB counted each
    counted = []
    for chunk in chunks:
        ids = ours.encode(chunk)
        assert ours._cache_bytes == cached_bytes(ours) <= budget
        counted.append(ours._cache_bytes)
        assert ours.encode(chunk) == ids  # served from the cache
    assert sum(tokenizer_module.cache_entry_bytes(c, tuple(reference.encode(c))) for c in chunks) > 5 * budget
    assert max(counted) > budget * 0.9 and counted[-1] < max(counted)  # it filled up and started over
    assert [ours.encode(c) for c in chunks] == [reference.encode(c) for c in chunks]


def test_chunks_too_long_to_cache_are_encoded_every_time():
    ours = Tokenizer()
    long_chunk = "ab" * tokenizer_module.MAX_CACHED_CHUNK_CHARS  # twice the length worth caching
    first = ours.encode(long_chunk)
    assert ours._chunk_cache == {} and ours._cache_bytes == 0
    assert ours.encode(long_chunk) == first == Tokenizer().encode(long_chunk)


@pytest.mark.parametrize("chunk", ["x", "photo", "don't", "a" * 1000, "猫" * 50, "😀" * 30, "ﬁné" * 20])
def test_cache_entry_bytes_is_an_upper_bound(chunk):
    # The str and the tuple are measured; ~50 bytes stand for the dict slot (24 bytes at 2/3 load, plus index).
    ids = tuple(Tokenizer().encode(chunk))
    assert sys.getsizeof(chunk) + sys.getsizeof(ids) + 50 <= tokenizer_module.cache_entry_bytes(chunk, ids)


def test_shapes_of_lists_tuples_and_empty_lists():
    assert tokenize([]).shape == (0, CONTEXT_LENGTH) and tokenize([]).dtype == torch.long
    assert tokenize(("a cat", "a dog")).shape == (2, CONTEXT_LENGTH)
    assert tokenize("a cat", context_length=10).shape == (1, 10)
    with pytest.raises(TokenizerError, match="context_length"):
        tokenize("a cat", context_length=1, truncate=True)


def test_attention_mask_covers_text_up_to_the_final_eot():
    # "!!" is one word whose first token is "!" = id 0, the padding id: the mask must not end there.
    texts = ["a cat", "", "x <|endoftext|> y", "!! !", "word " * 100]
    ids = tokenize(texts, truncate=True)
    mask = attention_mask(ids)
    assert mask.shape == ids.shape and mask.dtype == torch.long
    lengths = [min(len(Tokenizer().encode(t)) + 2, CONTEXT_LENGTH) for t in texts]
    assert mask.sum(dim=1).tolist() == lengths
    for row, length in zip(mask.tolist(), lengths):  # ones then zeros
        assert row == [1] * length + [0] * (CONTEXT_LENGTH - length)


# -----------------------------------------------------------------------------
# Threads and arbitrary input


def test_threads_share_one_tokenizer_and_get_identical_rows(texts):
    batch = texts[:1000]
    expected = Tokenizer().tokenize(batch, truncate=True)
    shared = Tokenizer()  # cold cache: the threads race to fill it
    results, errors = [None] * 8, []

    def work(slot):
        try:
            results[slot] = shared.tokenize(batch[slot * 37:] + batch[:slot * 37], truncate=True)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for slot, result in enumerate(results):  # each thread started at a different text, then wrapped around
        assert torch.equal(result, torch.cat([expected[slot * 37:], expected[:slot * 37]])), slot


ANY_CODE_POINT = st.integers(min_value=0, max_value=0x10FFFF).map(chr)  # surrogates and unassigned included
FRESH = {clean: Tokenizer(clean=clean) for clean in ("openai", "transformers")}  # caches apart from tokenize's


@settings(derandomize=True, max_examples=300, deadline=None)
@given(text=st.text(alphabet=ANY_CODE_POINT, max_size=120), context_length=st.integers(2, 80))
def test_any_unicode_never_crashes_and_is_deterministic(text, context_length):
    for clean in ("openai", "transformers"):
        rows = tokenize([text, text], context_length=context_length, truncate=True, clean=clean)
        assert rows.shape == (2, context_length)
        assert torch.equal(rows[0], rows[1])
        ids = FRESH[clean].encode(text)  # another instance, with a cache of its own
        assert FRESH[clean].encode(text) == ids  # the second call is served from the cache
        row = [SOT, *ids, EOT][:context_length]
        row[-1] = EOT
        assert rows[0].tolist() == row + [0] * (context_length - len(row))
