"""miniclip: a from-scratch, readable CLIP that loads OpenAI's checkpoints and matches the references.

    model, preprocess = miniclip.load("ViT-B/32")
    logits_per_image, logits_per_text = model(preprocess(images), miniclip.tokenize(texts))

The names below are imported on first use (PEP 562), so `import miniclip` and `miniclip --help` do not
pay for torch's import (about 2 s) until something needs it.
"""

import importlib

# public name -> the submodule that defines it
_EXPORTS = {
    # the model and how to get one
    "CLIP": "model", "EncoderOutput": "model", "load": "pretrained", "available_models": "pretrained",
    "CLIPConfig": "config", "VisionConfig": "config", "TextConfig": "config", "ResNetConfig": "config",
    "PRESETS": "config", "RESNET_PRESETS": "config", "HUB_IDS": "config",
    # inputs
    "preprocess": "image_processing", "Preprocessor": "image_processing",
    "tokenize": "tokenizer", "Tokenizer": "tokenizer", "attention_mask": "tokenizer",
    # jobs
    "zero_shot_classifier": "zero_shot", "ZeroShotClassifier": "zero_shot", "relevance_map": "relevance",
    # speed, opt-in and process-wide
    "keep_freed_memory": "malloc",
    # errors
    "MiniclipError": "errors", "CheckpointError": "errors", "CheckpointNotFoundError": "errors",
    "TokenizerError": "errors", "ImageError": "errors", "ImageNotFoundError": "errors", "InputError": "errors",
    "InputTypeError": "errors", "MissingDependencyError": "errors",
}
__all__ = list(_EXPORTS)
# modules a user reaches as `miniclip.speedups.apply(model)` after a plain `import miniclip`
_SUBMODULES = ("speedups", "train", "export")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)  # importing binds it in globals() too
    if name not in _EXPORTS:
        raise AttributeError(f"module 'miniclip' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
