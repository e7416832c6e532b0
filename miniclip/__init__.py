"""miniclip: a from-scratch, readable CLIP that loads OpenAI's checkpoints and matches the references."""

from .config import HUB_IDS, PRESETS, RESNET_PRESETS, CLIPConfig, ResNetConfig, TextConfig, VisionConfig
from .errors import (
    CheckpointError, CheckpointNotFoundError, ImageError, ImageNotFoundError, InputError, InputTypeError, MiniclipError, TokenizerError,
)
from .image_processing import Preprocessor, preprocess
from .model import CLIP, EncoderOutput
from .pretrained import available_models, load
from .relevance import relevance_map
from .tokenizer import Tokenizer, attention_mask, tokenize
from .zero_shot import ZeroShotClassifier, zero_shot_classifier

__all__ = [
    "CLIP", "load", "available_models", "preprocess", "Preprocessor", "zero_shot_classifier", "ZeroShotClassifier",
    "relevance_map", "tokenize", "Tokenizer", "attention_mask", "CLIPConfig", "VisionConfig", "TextConfig", "PRESETS", "HUB_IDS", "ResNetConfig", "RESNET_PRESETS", "EncoderOutput",
    "MiniclipError", "CheckpointError", "CheckpointNotFoundError", "TokenizerError", "ImageError", "ImageNotFoundError", "InputError",
    "InputTypeError",
]
