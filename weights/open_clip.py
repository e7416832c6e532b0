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

from miniclip.config import OPENAI_TOKENIZER, CLIPConfig, ResNetConfig, TextConfig, VisionConfig
from miniclip.errors import CheckpointError

from .shapes import heads

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # safetensors first

# One rule for every field of the config (open_clip's CLIPVisionCfg / CLIPTextCfg / CLIP, src/open_clip/model.py):
# - READ: miniclip reads it (in config_from_open_clip below);
# - NO_EFFECT: it leaves the model's outputs unchanged (training-only settings, output formats, settings of
#   towers that are refused anyway), so any value is accepted;
# - MUST_BE: miniclip implements only this value (open_clip's default); another is refused by name;
# - any field in none of them is refused by name: a new open_clip option is never skipped silently.
MODEL_READ = {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg", "init_logit_scale"}
MODEL_NO_EFFECT = {"cast_dtype", "output_dict"}
MODEL_MUST_BE = dict(custom_text=False, init_logit_bias=None, nonscalar_logit_scale=False, multimodal_cfg=None)

VISION_DEFAULTS = dict(layers=12, width=768, head_width=64, mlp_ratio=4.0, patch_size=16, image_size=224,
                       ls_init_value=None, attentional_pool=False, attn_pooler_queries=256, attn_pooler_heads=8,
                       no_ln_pre=False, final_ln_after_pool=False, pool_type="tok", act_kwargs=None,
                       norm_kwargs=None, qk_norm=False)
VISION_NO_EFFECT = {
    "patch_dropout",  # drops patches in training only
    "output_tokens", "image_seq_len",  # what forward returns besides the embedding; a bookkeeping attribute
    "pos_embed_type",  # 'learnable' or 'sin_cos_2d': either way the table is a tensor in the checkpoint
    "block_type",  # 'custom' blocks compute the same as 'default' ones unless a MUST_BE option below is on
    "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path",
    "timm_model_kwargs",  # settings of a timm trunk, which timm_model_name (refused) would bring
}
VISION_MUST_BE = dict(timm_model_name=None, scaled_cosine_attn=False, scale_heads=False, scale_attn_inner=False,
                      scale_attn=False, scale_fc=False)

TEXT_DEFAULTS = dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12, mlp_ratio=4.0,
                     ls_init_value=None, no_causal_mask=False, pool_type="argmax", eos_id=None, proj_bias=False,
                     act_kwargs=None, norm_kwargs=None, qk_norm=False, hf_tokenizer_name=None,
                     tokenizer_kwargs=None, tokenizer_type="", tokenizer_mode=None)
TEXT_NO_EFFECT = {
    "output_tokens", "block_type", "pad_id",  # pad_id masks only with embed_cls (refused)
    "bos_id", "tiktoken_name",  # tokenizer settings for tokenizer types that are recorded via tokenizer_type
    "hf_model_pretrained", "hf_proj_type", "hf_pooler_type", "hf_model_config",  # only with hf_model_name
    # only read by text_arch="modern" (refused):
    "attention_mode", "pos_embed", "rope_temperature", "mlp_type", "norm_type", "norm_eps", "attn_gated",
    "pre_norm", "norm_placement", "zero_init_residual", "reg_tokens", "value_residual", "attention_bias",
    "mlp_bias", "gate_bias",
}
TEXT_MUST_BE = dict(text_arch="clip", hf_model_name=None, embed_cls=False, proj_type="linear",
                    final_ln_after_pool=False,  # declared by open_clip, but its text tower ignores it
                    variable_text=False, scaled_cosine_attn=False, scale_heads=False, scale_attn_inner=False,
                    scale_attn=False, scale_fc=False)
TOWER_RULES = {"vision_cfg": (VISION_DEFAULTS, VISION_NO_EFFECT, VISION_MUST_BE),
               "text_cfg": (TEXT_DEFAULTS, TEXT_NO_EFFECT, TEXT_MUST_BE)}


def config_from_open_clip(cfg: dict) -> CLIPConfig:
    """An open_clip config (the whole open_clip_config.json, or its "model_cfg" alone) to our CLIPConfig."""
    model = cfg.get("model_cfg", cfg)
    check_fields(model, MODEL_READ, MODEL_NO_EFFECT, MODEL_MUST_BE, "model_cfg")
    v, t = (tower_fields(model.get(name) or {}, name) for name in ("vision_cfg", "text_cfg"))
    quick_gelu = bool(model.get("quick_gelu", False))
    text = text_config(t, quick_gelu)
    return CLIPConfig(vision_config(v, quick_gelu), text, embed_dim=model["embed_dim"],
                      **({"logit_scale_init": model["init_logit_scale"]} if "init_logit_scale" in model else {}))


def tower_fields(fields: dict, where: str) -> dict:
    defaults, no_effect, must_be = TOWER_RULES[where]
    check_fields(fields, set(defaults), no_effect, must_be, where)
    return {**defaults, **fields}


def check_fields(fields: dict, read: set, no_effect: set, must_be: dict, where: str) -> None:
    unknown = sorted(k for k in fields if k not in read | no_effect | must_be.keys())
    wrong = [k for k, v in must_be.items() if fields.get(k, v) != v]
    if unknown or wrong:
        raise CheckpointError(
            f"{CONFIG_FILE} sets open_clip options that miniclip does not implement: "
            + ", ".join(f"{where}.{k}={fields[k]!r}" for k in unknown + wrong)
            + ". miniclip loads plain-transformer CLIPs (and OpenAI's ResNets); timm or Hugging Face towers, "
            "CoCa and SigLIP are other models"
        )


def vision_config(v: dict, quick_gelu: bool) -> VisionConfig | ResNetConfig:
    if isinstance(v["layers"], (list, tuple)):  # four stage depths: OpenAI's modified ResNet
        # open_clip's ResNet configs say "patch_size": null; its ModifiedResNet reads none of the ViT options
        plain = {k: d for k, d in VISION_DEFAULTS.items()
                 if k not in ("layers", "width", "head_width", "image_size", "patch_size")}
        changed = [f"vision_cfg.{k}={v[k]!r}" for k, d in plain.items() if v[k] != d]
        if changed:
            raise CheckpointError(f"{CONFIG_FILE}: {', '.join(changed)} set for a ResNet image tower, which has no "
                                  "such option")
        return ResNetConfig(square(v["image_size"]), tuple(v["layers"]), width=v["width"], head_width=v["head_width"])
    if v["attentional_pool"] not in (False, True):  # open_clip's 'parallel' / 'cascade' poolers (unfinished there)
        raise CheckpointError(f"{CONFIG_FILE}: vision_cfg.attentional_pool={v['attentional_pool']!r} is not "
                              "implemented; miniclip implements attentional_pool=true")
    return VisionConfig(
        image_size=size(v["image_size"]), patch_size=size(v["patch_size"]), width=v["width"], layers=v["layers"],
        heads=heads(v["width"], v["head_width"], "vision", f"{CONFIG_FILE} vision_cfg.head_width"),
        mlp_width=int(v["width"] * v["mlp_ratio"]), activation=activation(v, quick_gelu, "vision_cfg"),
        layer_norm_eps=layer_norm_eps(v, "vision_cfg"), ln_pre=not v["no_ln_pre"],
        layer_scale=v["ls_init_value"] is not None, qk_norm=bool(v["qk_norm"]),
        pool=choice(v["pool_type"], ("tok", "avg"), "vision_cfg.pool_type"),
        final_ln_after_pool=bool(v["final_ln_after_pool"]),
        attn_pool_queries=v["attn_pooler_queries"] if v["attentional_pool"] else 0,
        attn_pool_heads=v["attn_pooler_heads"],
    )


def text_config(t: dict, quick_gelu: bool) -> TextConfig:
    pool = choice(t["pool_type"], ("argmax", "eos", "last", "first"), "text_cfg.pool_type")
    if pool == "eos" and t["eos_id"] is None:
        raise CheckpointError(f"{CONFIG_FILE}: text_cfg.pool_type='eos' needs text_cfg.eos_id (the token to read at)")
    # argmax pools at the row's largest id; miniclip reads the vocabulary's largest id (OpenAI's <|endoftext|>)
    # and refuses a row without it, which is the same position whenever the row has one.
    eot = t["eos_id"] if pool == "eos" else t["vocab_size"] - 1
    return TextConfig(
        vocab_size=t["vocab_size"], context_length=t["context_length"], width=t["width"], layers=t["layers"],
        heads=t["heads"], mlp_width=int(t["width"] * t["mlp_ratio"]), activation=activation(t, quick_gelu, "text_cfg"),
        layer_norm_eps=layer_norm_eps(t, "text_cfg"), eot_token_id=eot, causal=not t["no_causal_mask"],
        pool="eot" if pool in ("argmax", "eos") else pool, proj_bias=bool(t["proj_bias"]),
        layer_scale=t["ls_init_value"] is not None, qk_norm=bool(t["qk_norm"]), tokenizer=tokenizer(t),
    )


def activation(fields: dict, quick_gelu: bool, where: str) -> str:
    """quick_gelu, or nn.GELU with act_kwargs: {} or {"approximate": "none"} is exact, "tanh" its approximation."""
    kwargs = fields["act_kwargs"] or {}
    approximate = kwargs.get("approximate", "none")
    if set(kwargs) - {"approximate"} or approximate not in ("none", "tanh") or (quick_gelu and kwargs):
        raise CheckpointError(f"{CONFIG_FILE}: {where}.act_kwargs={kwargs!r} is not implemented; miniclip implements "
                              "GELU with {\"approximate\": \"none\" or \"tanh\"} and quick_gelu without act_kwargs")
    return "quick_gelu" if quick_gelu else "gelu_tanh" if approximate == "tanh" else "gelu"


def layer_norm_eps(fields: dict, where: str) -> float:
    kwargs = fields["norm_kwargs"] or {}
    if set(kwargs) - {"eps"}:
        raise CheckpointError(f"{CONFIG_FILE}: {where}.norm_kwargs={kwargs!r} is not implemented; miniclip "
                              "implements LayerNorm with {\"eps\": ...}")
    return float(kwargs.get("eps", 1e-5))


def tokenizer(t: dict) -> str:
    """OPENAI_TOKENIZER, or a name for the tokenizer the config asks for, which miniclip.tokenize is not."""
    other = {k: t[k] for k in ("hf_tokenizer_name", "tokenizer_kwargs", "tokenizer_type", "tokenizer_mode") if t[k]}
    return ", ".join(f"{k}={v}" for k, v in other.items()) if other else OPENAI_TOKENIZER


def choice(value, allowed: tuple, where: str):
    if value not in allowed:
        raise CheckpointError(f"{CONFIG_FILE}: {where}={value!r} is not implemented; miniclip implements {allowed}")
    return value


def size(value) -> int | tuple[int, int]:
    """open_clip allows an int or a (height, width) pair; a square pair is kept as an int."""
    if isinstance(value, (list, tuple)):
        h, w = value
        return h if h == w else (h, w)
    return value


def square(value) -> int:
    """OpenAI's ResNet takes square images."""
    if isinstance(size(value), tuple):
        raise CheckpointError(f"{CONFIG_FILE} asks for non-square size {value}; the ResNet takes square images")
    return size(value)


# -----------------------------------------------------------------------------
# preprocess_cfg: the image pipeline open_clip_config.json records beside the model (open_clip's PreprocessCfg)

PREPROCESS_READ = {"mean", "std", "interpolation", "resize_mode"}
PREPROCESS_NO_EFFECT = {"size", "fill_color"}  # size: the model's own; fill_color: only for resize_mode "longest"
RESAMPLE = {"bicubic": 3, "bilinear": 2}  # PIL's Image.Resampling values


def preprocessor(path, image_size: int):
    """The Preprocessor that open_clip_config.json's preprocess_cfg describes; fields it cannot honour refused."""
    import json

    from miniclip.image_processing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Preprocessor

    cfg = json.loads(open(path).read()).get("preprocess_cfg") or {}
    check_fields(cfg, PREPROCESS_READ, PREPROCESS_NO_EFFECT, {}, "preprocess_cfg")
    interpolation = choice(cfg.get("interpolation", "bicubic"), tuple(RESAMPLE), "preprocess_cfg.interpolation")
    mode = choice(cfg.get("resize_mode", "shortest"), ("shortest", "squash"), "preprocess_cfg.resize_mode")
    # crop="openai": open_clip center-crops with torchvision's CenterCrop, rounding as OpenAI's pipeline does
    return Preprocessor(size=image_size, crop_size=image_size, crop="openai",
                        mean=tuple(cfg.get("mean", OPENAI_CLIP_MEAN)), std=tuple(cfg.get("std", OPENAI_CLIP_STD)),
                        resample=RESAMPLE[interpolation], keep_aspect=mode == "shortest")
