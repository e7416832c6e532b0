"""OpenAI CLIP's tokenizer, from scratch: cleaning, byte-level BPE, and 77-position rows as `clip.tokenize` makes them.

    >>> from miniclip.tokenizer import tokenize
    >>> tokenize("Hello World!")[0, :6].tolist()
    [49406, 3306, 1002, 256, 49407, 0]

The files, in the order the text goes through them:
- clean.py:     OpenAI's cleaning (ftfy, HTML unescaping, whitespace, lower case) or transformers' normaliser
- bpe.py:       the word pattern, the byte-to-unicode table and the merge loop
- vocab.py:     the shipped merges file (checked by sha256), or a checkpoint's vocab.json + merges.txt;
                the Hub's tokenizer files, for `miniclip convert --to transformers`
- tokenizer.py: `Tokenizer` (encode/decode, with a chunk cache), `tokenize`, `attention_mask`
"""

from .tokenizer import CONTEXT_LENGTH, EOT, PAD, SOT, Tokenizer, attention_mask, default_tokenizer, tokenize
from .vocab import write_hub_tokenizer, write_hub_vocab

__all__ = ["Tokenizer", "tokenize", "attention_mask", "write_hub_vocab", "write_hub_tokenizer", "default_tokenizer",
           "SOT", "EOT", "PAD", "CONTEXT_LENGTH"]
