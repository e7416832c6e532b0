"""The references miniclip is tested against, loaded without their heavy dependencies.

OpenAI's own CLIP code is on PyPI as `openai-clip` (1.0.1). It is installed with `--no-deps`, because
its metadata pulls in torchvision, which we never install; for the same reason its package
`__init__` (which imports `clip/clip.py`, which imports torchvision) cannot be imported. So we find
the installed files through the distribution's metadata and load the two modules we need by file path:

- `clip/simple_tokenizer.py`: OpenAI's tokenizer, the oracle for every token id
  (`openai_simple_tokenizer()`, `openai_tokenize()`).
- `clip/model.py`: OpenAI's model, the oracle for the model's numbers (`openai_model_module()`).

`clip.tokenize` itself lives in `clip/clip.py`; rather than retyping it, `openai_tokenize` compiles
that one function out of OpenAI's source (with `ast`) so the padding and truncation rules we compare
against are OpenAI's own text.

transformers' `CLIPTokenizerFast` (Rust) is the second reference (for the `clean="transformers"`
switch and the benchmark). It cannot be downloaded here, so `hub_clip_tokenizer_fast(directory)`
builds it from a Hub-style `vocab.json` + `merges.txt` that `write_hub_vocab_files` writes from
OpenAI's tokenizer tables.

Everything is cached: each module is executed once per process.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

OPENAI_DISTRIBUTION = "openai-clip"


def openai_clip_file(relative_path: str) -> Path:
    """The installed file `relative_path` (e.g. "clip/model.py") of OpenAI's `openai-clip` package.

    Found through the distribution's metadata, so the `clip` package is never imported.
    """
    try:
        distribution = importlib.metadata.distribution(OPENAI_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as error:
        raise RuntimeError(
            "OpenAI's reference code is not installed: pip install --no-deps openai-clip==1.0.1"
        ) from error
    path = Path(distribution.locate_file(relative_path))
    if not path.is_file():
        raise RuntimeError(f"{OPENAI_DISTRIBUTION} is installed but has no {relative_path} ({path})")
    return path


def _load_module_from_file(module_name: str, path: Path) -> ModuleType:
    """Execute the Python file at `path` as a module named `module_name` (registered in sys.modules)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses/pickle look modules up by name
    spec.loader.exec_module(module)
    return module


@functools.cache
def openai_simple_tokenizer_module() -> ModuleType:
    """OpenAI's `clip/simple_tokenizer.py`, as a module (needs only ftfy and regex)."""
    return _load_module_from_file("openai_clip_simple_tokenizer", openai_clip_file("clip/simple_tokenizer.py"))


@functools.cache
def openai_model_module() -> ModuleType:
    """OpenAI's `clip/model.py`, as a module (needs only torch and numpy): `build_model`, `CLIP`, ..."""
    return _load_module_from_file("openai_clip_model", openai_clip_file("clip/model.py"))


@functools.cache
def openai_simple_tokenizer():
    """One shared instance of OpenAI's `SimpleTokenizer` with its own shipped merges file.

    Its word cache only grows; that cannot change its answers (a cache hit returns what a miss computes).
    """
    return openai_simple_tokenizer_module().SimpleTokenizer()


@functools.cache
def _openai_tokenize_function():
    """`tokenize` compiled from OpenAI's `clip/clip.py`, bound to `openai_simple_tokenizer()`.

    The rest of clip.py (model download, torchvision transforms) is never executed.
    """
    import typing

    import packaging.version
    import torch

    path = openai_clip_file("clip/clip.py")
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    function = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "tokenize")
    namespace = {
        "torch": torch,
        "packaging": packaging,
        "Union": typing.Union,
        "List": typing.List,
        "_tokenizer": openai_simple_tokenizer(),
    }
    exec(compile(ast.Module(body=[function], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["tokenize"]


def openai_tokenize(texts, context_length: int = 77, truncate: bool = False):
    """OpenAI's `clip.tokenize` (an IntTensor [n, context_length]; RuntimeError when too long)."""
    return _openai_tokenize_function()(texts, context_length=context_length, truncate=truncate)


def openai_encode(text: str) -> list[int]:
    """OpenAI's ids for `text`, without `<|startoftext|>`/`<|endoftext|>`."""
    return openai_simple_tokenizer().encode(text)


def write_hub_vocab_files(directory) -> tuple[Path, Path]:
    """Write OpenAI's vocabulary as a Hub checkpoint ships it: `vocab.json` + `merges.txt`.

    vocab.json maps every token to its id (49,408 entries); merges.txt is `#version: 0.2` then one
    merge per line ("a b"), in rank order. Both are derived from OpenAI's tokenizer tables, not from
    miniclip, so a test loading them checks miniclip's Hub loader against an independent writer.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    oracle = openai_simple_tokenizer()
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    vocab_path.write_text(json.dumps(oracle.encoder, ensure_ascii=False), encoding="utf-8")
    merges = sorted(oracle.bpe_ranks, key=oracle.bpe_ranks.get)
    merges_path.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return vocab_path, merges_path


def hub_clip_tokenizer_fast(directory):
    """transformers' `CLIPTokenizerFast` (Rust `tokenizers`) built offline from Hub-style files.

    Writes vocab.json/merges.txt into `directory` first. Note its pad id is `<|endoftext|>` (49407),
    where OpenAI pads with 0: compare sequences (bos + tokens + eos), not padded rows.
    """
    from transformers import CLIPTokenizerFast

    vocab_path, merges_path = write_hub_vocab_files(directory)
    return CLIPTokenizerFast(vocab=str(vocab_path), merges=str(merges_path))
