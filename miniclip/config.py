"""CLIP's configuration: one frozen dataclass per tower, one for the whole model, and the released presets.

The sizes are those of the paper (Radford et al. 2021, "Learning Transferable Visual Models From
Natural Language Supervision", tables 19-20) and of OpenAI's released checkpoints. Reading a
checkpoint's own `config.json` is a format question, so it lives in `miniclip.weights.hf`.
"""

import math
from dataclasses import dataclass, field, replace

# OpenAI's vocabulary: 256 byte symbols, the same with the end-of-word marker, 48,894 merges, then
# <|startoftext|> and <|endoftext|>. The tokenizer package names its own copies of these ids.
VOCAB_SIZE = 49408
EOT_TOKEN_ID = 49407  # <|endoftext|>: the text tower pools its output here
CONTEXT_LENGTH = 77  # every released text tower has 77 learned positions

ACTIVATIONS = ("quick_gelu", "gelu")


@dataclass(frozen=True)
class VisionConfig:
    image_size: int = 224
    patch_size: int = 32
    width: int = 768  # the transformer's residual width ("d_model")
    layers: int = 12
    heads: int = 12
    mlp_width: int = 3072  # 4 * width in every released model
    # OpenAI trained with quick_gelu (x * sigmoid(1.702 x)); the LAION/open_clip models use exact gelu.
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        return self.grid_size**2 + 1  # one per patch, plus the class token


# The modified ResNet (miniclip/resnet.py) halves the image five times: a stride-2 convolution and a 2x2
# average pool in the stem, then stride 2 in stages 2, 3 and 4.
RESNET_DOWNSAMPLING = 32
BOTTLENECK_EXPANSION = 4  # a bottleneck block's output is 4x as wide as its inner convolutions (He et al. 2016)


@dataclass(frozen=True)
class ResNetConfig:
    """OpenAI's modified ResNet image encoder (the RN* checkpoints); see miniclip/resnet.py."""

    image_size: int = 224
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)  # bottleneck blocks in each of the four stages
    width: int = 64  # the stem's output channels; stage s convolves width * 2**s channels inside its blocks
    head_width: int = 64  # the attention pool's heads are 64 wide, like the transformers' (OpenAI, open_clip)

    def __post_init__(self):
        if self.image_size % RESNET_DOWNSAMPLING:
            raise ValueError(f"ResNet image_size={self.image_size} is not a multiple of {RESNET_DOWNSAMPLING}")
        if len(self.layers) != 4:
            raise ValueError(f"ResNet layers={self.layers}: expected four stages")

    @property
    def feature_width(self) -> int:
        """Channels out of the last stage, which the attention pool reads: width * 8 * 4 = width * 32."""
        return self.width * 2 ** (len(self.layers) - 1) * BOTTLENECK_EXPANSION

    @property
    def heads(self) -> int:
        return self.feature_width // self.head_width

    @property
    def grid_size(self) -> int:
        return self.image_size // RESNET_DOWNSAMPLING


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = VOCAB_SIZE
    context_length: int = CONTEXT_LENGTH
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_width: int = 2048
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eot_token_id: int = EOT_TOKEN_ID


@dataclass(frozen=True)
class CLIPConfig:
    vision: VisionConfig | ResNetConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 512  # the shared image-text embedding space
    # The paper initialises the temperature to 0.07, i.e. logit_scale = ln(1 / 0.07) ~ 2.6593. The released
    # models all trained it to the clamp at ln(100), so for them logit_scale.exp() == 100.
    logit_scale_init: float = math.log(1 / 0.07)

    def __post_init__(self):
        is_vit = isinstance(self.vision, VisionConfig)  # a ResNetConfig checks its own sizes
        for name, tower in [("vision", self.vision)] * is_vit + [("text", self.text)]:
            if tower.width % tower.heads:
                raise ValueError(f"{name}.width={tower.width} is not divisible by {name}.heads={tower.heads}")
            if tower.activation not in ACTIVATIONS:
                raise ValueError(f"{name}.activation={tower.activation!r}; expected one of {ACTIVATIONS}")
        if is_vit and self.vision.image_size % self.vision.patch_size:
            raise ValueError(
                f"vision.image_size={self.vision.image_size} is not a multiple of patch_size={self.vision.patch_size}"
            )


_B_TEXT = TextConfig(width=512, layers=12, heads=8, mlp_width=2048)
_L_TEXT = TextConfig(width=768, layers=12, heads=12, mlp_width=3072)
_L_VISION = VisionConfig(patch_size=14, width=1024, layers=24, heads=16, mlp_width=4096)

# The released OpenAI ViT checkpoints; parameter counts are those of transformers' CLIPModel for the same
# config (checked in tests/test_model.py).
PRESETS = {
    "ViT-B/32": CLIPConfig(VisionConfig(patch_size=32), _B_TEXT, embed_dim=512),  # 151,277,313 params
    "ViT-B/16": CLIPConfig(VisionConfig(patch_size=16), _B_TEXT, embed_dim=512),  # 149,620,737 params
    "ViT-L/14": CLIPConfig(_L_VISION, _L_TEXT, embed_dim=768),  # 427,616,513 params
    "ViT-L/14@336px": CLIPConfig(replace(_L_VISION, image_size=336), _L_TEXT, embed_dim=768),  # 427,944,193
}

# Where each preset's weights live on the Hugging Face Hub (transformers layout).
HUB_IDS = {
    "ViT-B/32": "openai/clip-vit-base-patch32",
    "ViT-B/16": "openai/clip-vit-base-patch16",
    "ViT-L/14": "openai/clip-vit-large-patch14",
    "ViT-L/14@336px": "openai/clip-vit-large-patch14-336",
}

# OpenAI's ResNet checkpoints (clip/clip.py _MODELS), with the sizes its build_model infers from their weights
# and the same parameter counts as its model (both checked in tests/test_formats.py). transformers has no
# ResNet CLIP, so they load from OpenAI's layout only and are kept apart from PRESETS, whose entries all
# have a transformers twin on the Hub.
RESNET_PRESETS = {
    "RN50": CLIPConfig(ResNetConfig(224, (3, 4, 6, 3), width=64), _B_TEXT, embed_dim=1024),  # 102,007,137 params
    "RN101": CLIPConfig(ResNetConfig(224, (3, 4, 23, 3), width=64), _B_TEXT, embed_dim=512),  # 119,688,033
    "RN50x4": CLIPConfig(ResNetConfig(288, (4, 6, 10, 6), width=80),  # 178,300,601
                         TextConfig(width=640, heads=10, mlp_width=2560), embed_dim=640),
    "RN50x16": CLIPConfig(ResNetConfig(384, (6, 8, 18, 8), width=96), _L_TEXT, embed_dim=768),  # 290,979,217
    "RN50x64": CLIPConfig(ResNetConfig(448, (3, 15, 36, 10), width=128),  # 623,258,305
                          TextConfig(width=1024, heads=16, mlp_width=4096), embed_dim=1024),
}
