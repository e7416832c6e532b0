"""OpenAI CLIP byte-level BPE tokenizer."""
