"""open_clip's layout on the Hub (e.g. timm/vit_base_patch32_clip_224.openai, laion/CLIP-ViT-H-14-laion2B-s32B-b79K).

A repository holds `open_clip_config.json` and `open_clip_model.safetensors` or `open_clip_pytorch_model.bin`.
The tensors of open_clip's `CLIP` class carry OpenAI's names, so they are converted by OpenAI's table
(weights/openai.py); what this module adds is the config file, which says what shapes cannot: the head
count (`head_width`), and the activation (`quick_gelu`: true for OpenAI's weights, false for LAION's, which
were trained with exact gelu).

The config, as open_clip writes it (src/open_clip/model.py: CLIPVisionCfg, CLIPTextCfg), with the
model_configs/*.json files holding the inner "model_cfg" object alone:
    {"model_cfg": {"embed_dim": 1024, "quick_gelu": false,
                   "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
                   "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24}},
     "preprocess_cfg": {"mean": [...], "std": [...]}}
A ResNet's vision_cfg has a list of four stage depths as "layers" (RN50: [3, 4, 6, 3]).
"""

from miniclip.config import CLIPConfig, ResNetConfig, TextConfig, VisionConfig
from miniclip.errors import CheckpointError

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # safetensors first

# open_clip's defaults for the fields a config may leave out (CLIPVisionCfg / CLIPTextCfg).
VISION_DEFAULTS = dict(layers=12, width=768, head_width=64, mlp_ratio=4.0, patch_size=16, image_size=224)
TEXT_DEFAULTS = dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12, mlp_ratio=4.0)

# open_clip options that change the architecture and that miniclip does not implement, with the value that
# means "off". A config that turns one on is refused by name rather than loaded into the wrong model.
UNSUPPORTED_VISION = dict(ls_init_value=None, attentional_pool=False, no_ln_pre=False, final_ln_after_pool=False,
                          pool_type="tok", timm_model_name=None, input_patchnorm=False, global_average_pool=False)
UNSUPPORTED_TEXT = dict(ls_init_value=None, embed_cls=False, no_causal_mask=False, final_ln_after_pool=False,
                        pool_type="argmax", proj_bias=False, hf_model_name=None)
UNSUPPORTED_MODEL = dict(custom_text=False, init_logit_bias=None)


def config_from_open_clip(cfg: dict) -> CLIPConfig:
    """An open_clip config (the whole open_clip_config.json, or its "model_cfg" alone) to our CLIPConfig."""
    model = cfg.get("model_cfg", cfg)
    v = {**VISION_DEFAULTS, **model.get("vision_cfg", {})}
    t = {**TEXT_DEFAULTS, **model.get("text_cfg", {})}
    refuse_unsupported(model, UNSUPPORTED_MODEL, "model_cfg")
    refuse_unsupported(v, UNSUPPORTED_VISION, "vision_cfg")
    refuse_unsupported(t, UNSUPPORTED_TEXT, "text_cfg")
    activation = "quick_gelu" if model.get("quick_gelu", False) else "gelu"
    image_size = square(v["image_size"])
    if isinstance(v["layers"], (list, tuple)):  # four stage depths: OpenAI's modified ResNet
        vision = ResNetConfig(image_size, tuple(v["layers"]), width=v["width"], head_width=v["head_width"])
    else:
        vision = VisionConfig(
            image_size=image_size, patch_size=square(v["patch_size"]), width=v["width"], layers=v["layers"],
            heads=v["width"] // v["head_width"], mlp_width=int(v["width"] * v["mlp_ratio"]), activation=activation,
        )
    text = TextConfig(
        vocab_size=t["vocab_size"], context_length=t["context_length"], width=t["width"], layers=t["layers"],
        heads=t["heads"], mlp_width=int(t["width"] * t["mlp_ratio"]), activation=activation,
        # open_clip pools at argmax(input_ids): the vocabulary's largest id, which is <|endoftext|>
        eot_token_id=t["vocab_size"] - 1,
    )
    return CLIPConfig(vision, text, embed_dim=model["embed_dim"])


def refuse_unsupported(fields: dict, off: dict, where: str) -> None:
    on = {name: fields[name] for name, value in off.items() if fields.get(name, value) != value}
    if on:
        raise CheckpointError(
            f"{CONFIG_FILE} turns on open_clip options that miniclip does not implement: "
            + ", ".join(f"{where}.{name}={value!r}" for name, value in on.items())
        )


def square(size) -> int:
    """open_clip allows (height, width) pairs; miniclip's models take square images."""
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise CheckpointError(f"{CONFIG_FILE} asks for non-square size {size}; miniclip takes square images")
        return size[0]
    return size
