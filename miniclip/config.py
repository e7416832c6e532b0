"""CLIP's configuration: one frozen dataclass per tower, one for the whole model, and the released presets.

The sizes are those of the paper (Radford et al. 2021, "Learning Transferable Visual Models From
Natural Language Supervision", tables 19-20) and of OpenAI's released checkpoints. Reading a
checkpoint's own `config.json` is a format question, so it lives in `miniclip.weights.hf`.
"""

import difflib
import math
from dataclasses import dataclass, field, replace

# OpenAI's vocabulary: 256 byte symbols, the same with the end-of-word marker, 48,894 merges, then
# <|startoftext|> and <|endoftext|>. The tokenizer package names its own copies of these ids.
VOCAB_SIZE = 49408
EOT_TOKEN_ID = 49407  # <|endoftext|>: the text tower pools its output here
CONTEXT_LENGTH = 77  # every released text tower has 77 learned positions

# The activations miniclip implements. OpenAI trained with quick_gelu (x * sigmoid(1.702 x)); the LAION and
# most later open_clip models use exact gelu; SigLIP-style towers use gelu's tanh approximation.
ACTIVATIONS = ("quick_gelu", "gelu", "gelu_tanh")
VISION_POOLS = ("tok", "avg")  # the class token; the mean of the patch tokens
TEXT_POOLS = ("eot", "last", "first")  # the first end-of-text token; the last position; the first position
OPENAI_TOKENIZER = "openai"  # the BPE that miniclip.tokenize implements


def pair(size) -> tuple[int, int]:
    """A size given as one int (square) or as (height, width)."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


@dataclass(frozen=True)
class VisionConfig:
    image_size: int | tuple[int, int] = 224  # an int for square images, else (height, width)
    patch_size: int | tuple[int, int] = 32
    width: int = 768  # the transformer's residual width ("d_model")
    layers: int = 12
    heads: int = 12
    mlp_width: int = 3072  # 4 * width in every model OpenAI released
    activation: str = "quick_gelu"  # one of ACTIVATIONS
    layer_norm_eps: float = 1e-5
    # Options of later CLIPs (open_clip's configs), each off in OpenAI's models. They change the model at
    # one place each, named after the option in miniclip/model.py.
    ln_pre: bool = True  # a LayerNorm before the first block (OpenAI's addition to ViT; CLIPA drops it)
    layer_scale: bool = False  # learned per-channel scales on both residual branches (CaiT; ViT-M-16-alt)
    qk_norm: bool = False  # a LayerNorm on each head's queries and keys before attention
    pool: str = "tok"  # how the image is read off the tokens: one of VISION_POOLS
    final_ln_after_pool: bool = False  # ln_post on the pooled vector instead of on every token (CLIPA)
    attn_pool_queries: int = 0  # > 0: an attentional pooler with this many learned queries reads the tokens
    attn_pool_heads: int = 8  # (CoCa's), and ln_post, pooling and proj then work at embed_dim

    @property
    def image_hw(self) -> tuple[int, int]:
        return pair(self.image_size)

    @property
    def patch_hw(self) -> tuple[int, int]:
        return pair(self.patch_size)

    @property
    def grid_hw(self) -> tuple[int, int]:
        (h, w), (ph, pw) = self.image_hw, self.patch_hw
        return h // ph, w // pw

    @property
    def grid_size(self) -> int:
        """Patches along each side of a square grid (see grid_hw for non-square ones)."""
        gh, gw = self.grid_hw
        if gh != gw:
            raise ValueError(f"the patch grid is {gh}x{gw}, not square; use grid_hw")
        return gh

    @property
    def num_positions(self) -> int:
        gh, gw = self.grid_hw
        return gh * gw + 1  # one per patch, plus the class token


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
    eot_token_id: int = EOT_TOKEN_ID  # where pool="eot" reads the text
    # Options of later CLIPs (open_clip's configs), each off in OpenAI's models; see VisionConfig.
    causal: bool = True  # False: every token attends to every other (CLIPA's bidirectional text tower)
    pool: str = "eot"  # one of TEXT_POOLS
    proj_bias: bool = False  # the projection into the embedding space has a bias
    layer_scale: bool = False
    qk_norm: bool = False
    # Which tokenizer made the ids the model was trained on. The model computes on any ids; miniclip's own
    # tokenize() is OpenAI's BPE, so text-taking helpers refuse models trained with another tokenizer.
    tokenizer: str = OPENAI_TOKENIZER


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
        if self.text.pool not in TEXT_POOLS:
            raise ValueError(f"text.pool={self.text.pool!r}; expected one of {TEXT_POOLS}")
        if is_vit:
            v = self.vision
            if v.pool not in VISION_POOLS:
                raise ValueError(f"vision.pool={v.pool!r}; expected one of {VISION_POOLS}")
            if any(size % patch for size, patch in zip(v.image_hw, v.patch_hw)):
                raise ValueError(f"vision.image_size={v.image_size} is not a multiple of patch_size={v.patch_size}")
            if v.attn_pool_queries and self.embed_dim % v.attn_pool_heads:
                raise ValueError(f"embed_dim={self.embed_dim} is not divisible by "
                                 f"vision.attn_pool_heads={v.attn_pool_heads}")
            if v.attn_pool_queries and v.final_ln_after_pool:
                raise ValueError("vision.final_ln_after_pool has no meaning with an attentional pooler "
                                 "(open_clip ignores it there); turn one of them off")


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


# -----------------------------------------------------------------------------
# Preset names as people type them

# How close (difflib's ratio, 0..1) a name must be to a preset's to count as a typo of it: "ViT-B/33" and
# "VIT-B32" are (0.88, 0.93); Hub ids such as "openai/clip-vit-base-patch32" are far below (0.44).
PRESET_TYPO_CUTOFF = 0.8


def preset_key(name: str) -> str:
    """A model name without its spelling: OpenAI writes "ViT-B/32" and "ViT-L/14@336px", open_clip writes
    "ViT-B-32" and "ViT-L-14-336"; both become "vit-b-32" and "vit-l-14-336". Hyphens stay, so "VIT-B32" is
    a near miss ("did you mean"), not a match."""
    return name.strip().lower().replace("/", "-").replace("@", "-").removesuffix("px")


_PRESET_KEYS = {preset_key(name): name for name in [*PRESETS, *RESNET_PRESETS]}


def find_preset(name) -> str | None:
    """The preset `name` spells, in OpenAI's or open_clip's way and in any case, else None.

    "vit-b/32", "ViT-B-32" -> "ViT-B/32";  "ViT-L-14-336" -> "ViT-L/14@336px";  "rn50" -> "RN50";
    "ViT-B/33", "openai/clip-vit-base-patch32" -> None.
    """
    return _PRESET_KEYS.get(preset_key(name)) if isinstance(name, str) else None


def suggest_preset(name: str) -> str | None:
    """The preset `name` is most likely a typo of ("ViT-B/33", "VIT-B32" -> "ViT-B/32"), or None."""
    close = difflib.get_close_matches(preset_key(name), _PRESET_KEYS, n=1, cutoff=PRESET_TYPO_CUTOFF)
    return _PRESET_KEYS[close[0]] if close else None
