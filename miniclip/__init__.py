"""miniclip: a from-scratch, readable CLIP that loads OpenAI's checkpoints and matches the references."""

from .config import HUB_IDS, PRESETS, CLIPConfig, TextConfig, VisionConfig
from .errors import (
    CheckpointError, CheckpointNotFoundError, ImageError, InputError, InputTypeError, MiniclipError, TokenizerError,
)
from .model import CLIP, EncoderOutput

__all__ = [
    "CLIP", "CLIPConfig", "VisionConfig", "TextConfig", "PRESETS", "HUB_IDS", "EncoderOutput",
    "MiniclipError", "CheckpointError", "CheckpointNotFoundError", "TokenizerError", "ImageError", "InputError",
    "InputTypeError",
]
