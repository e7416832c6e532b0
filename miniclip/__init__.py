"""miniclip: a from-scratch, readable CLIP that loads OpenAI's checkpoints and matches the references.

    model, preprocess = miniclip.load("ViT-B/32")
    logits_per_image, logits_per_text = model(preprocess(images), miniclip.tokenize(texts))
"""

from .config import HUB_IDS, PRESETS, RESNET_PRESETS, CLIPConfig, ResNetConfig, TextConfig, VisionConfig
from .errors import (
    CheckpointError, CheckpointNotFoundError, ImageError, ImageNotFoundError, InputError, InputTypeError,
    MiniclipError, MissingDependencyError, TokenizerError,
)
from .image_processing import Preprocessor, preprocess
from .malloc import keep_freed_memory
from .model import CLIP, EncoderOutput
from .pretrained import available_models, load
from .relevance import relevance_map
from .tokenizer import Tokenizer, attention_mask, tokenize
from .zero_shot import ZeroShotClassifier, zero_shot_classifier

__all__ = [
    # the model and how to get one
    "CLIP", "load", "available_models", "EncoderOutput",
    "CLIPConfig", "VisionConfig", "TextConfig", "ResNetConfig", "PRESETS", "RESNET_PRESETS", "HUB_IDS",
    # inputs
    "preprocess", "Preprocessor", "tokenize", "Tokenizer", "attention_mask",
    # jobs
    "zero_shot_classifier", "ZeroShotClassifier", "relevance_map",
    # speed, opt-in and process-wide
    "keep_freed_memory",
    # errors
    "MiniclipError", "CheckpointError", "CheckpointNotFoundError", "TokenizerError", "ImageError",
    "ImageNotFoundError", "InputError", "InputTypeError", "MissingDependencyError",
]
