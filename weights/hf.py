"""The transformers layout (`openai/clip-vit-*` on the Hub): its config.json and its tensor names.

Everything that is peculiar to transformers' files lives here, in plain sight:
- the key table between its names and ours (including its spelling `pre_layrnorm`);
- q, k and v stored as three projections, which miniclip fuses into one `qkv` (concatenated along
  the output dimension, in the order q, k, v);
- the non-parameter `position_ids` buffers that older files carry;
- config.json quirks: the legacy `*_config_dict` fields and the legacy `eos_token_id: 2`.
"""

import json
import math
from pathlib import Path

from miniclip.config import CLIPConfig, TextConfig, VisionConfig

from .table import Plan, fused, renamed

# Tensors outside the residual blocks: (ours, transformers').
TOP_LEVEL = [
    ("logit_scale", "logit_scale"),
    ("visual.patch_embed.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    ("visual.position_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("visual.ln_pre.weight", "vision_model.pre_layrnorm.weight"),  # sic: transformers' spelling
    ("visual.ln_pre.bias", "vision_model.pre_layrnorm.bias"),
    ("visual.ln_post.weight", "vision_model.post_layernorm.weight"),
    ("visual.ln_post.bias", "vision_model.post_layernorm.bias"),
    ("visual.proj.weight", "visual_projection.weight"),
    ("text.token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("text.position_embedding", "text_model.embeddings.position_embedding.weight"),
    ("text.ln_final.weight", "text_model.final_layer_norm.weight"),
    ("text.ln_final.bias", "text_model.final_layer_norm.bias"),
    ("text.proj.weight", "text_projection.weight"),
]

# Inside block i: (ours under `{tower}.blocks.{i}.`, transformers' under `{tower}.encoder.layers.{i}.`),
# each with a .weight and a .bias.
BLOCK = [
    ("ln_1", "layer_norm1"),
    ("attn.proj", "self_attn.out_proj"),
    ("ln_2", "layer_norm2"),
    ("mlp.fc1", "mlp.fc1"),
    ("mlp.fc2", "mlp.fc2"),
]
QKV = ("attn.qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"))
TOWERS = [("visual", "vision_model", "vision"), ("text", "text_model", "text")]

# Buffers that older transformers versions saved; they hold nothing but arange(n) and are not parameters.
IGNORED = {"vision_model.embeddings.position_ids", "text_model.embeddings.position_ids"}


def plan(config: CLIPConfig) -> Plan:
    """Every miniclip tensor and the transformers tensor(s) it is made of, for a model of this config."""
    entries = [renamed(ours, theirs) for ours, theirs in TOP_LEVEL]
    for ours_tower, their_tower, cfg_name in TOWERS:
        for i in range(getattr(config, cfg_name).layers):
            ours, theirs = f"{ours_tower}.blocks.{i}.", f"{their_tower}.encoder.layers.{i}."
            for p in ("weight", "bias"):
                entries += [renamed(f"{ours}{a}.{p}", f"{theirs}{b}.{p}") for a, b in BLOCK]
                entries.append(fused(f"{ours}{QKV[0]}.{p}", [f"{theirs}{name}.{p}" for name in QKV[1]]))
    return Plan("transformers", entries, IGNORED)


# -----------------------------------------------------------------------------
# config.json

# transformers' defaults for fields a config.json may leave out (CLIPVisionConfig / CLIPTextConfig).
VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                     num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                     layer_norm_eps=1e-5, eos_token_id=49407)
LEGACY_EOS_TOKEN_ID = 2  # what the openai/clip-vit-* config.json files still say; see text_config below


def tower_fields(cfg: dict, name: str, defaults: dict) -> dict:
    # Files written by early transformers versions keep the non-default values in `text_config_dict`
    # (and `vision_config_dict`), which transformers lets override `text_config`.
    return {**defaults, **(cfg.get(f"{name}_config") or {}), **(cfg.get(f"{name}_config_dict") or {})}


def config_from_hf(cfg: dict) -> CLIPConfig:
    """A transformers CLIPConfig, as a dict read from config.json, to our CLIPConfig."""
    v = tower_fields(cfg, "vision", VISION_DEFAULTS)
    t = tower_fields(cfg, "text", TEXT_DEFAULTS)
    vision = VisionConfig(
        image_size=v["image_size"], patch_size=v["patch_size"], width=v["hidden_size"],
        layers=v["num_hidden_layers"], heads=v["num_attention_heads"], mlp_width=v["intermediate_size"],
        activation=v["hidden_act"], layer_norm_eps=v["layer_norm_eps"],
    )
    # The legacy eos_token_id 2 predates the fix in transformers PR #24773; with it, transformers pools at
    # argmax(input_ids), i.e. at the largest id of the vocabulary, which is <|endoftext|>.
    eot = t["vocab_size"] - 1 if t["eos_token_id"] == LEGACY_EOS_TOKEN_ID else t["eos_token_id"]
    text = TextConfig(
        vocab_size=t["vocab_size"], context_length=t["max_position_embeddings"], width=t["hidden_size"],
        layers=t["num_hidden_layers"], heads=t["num_attention_heads"], mlp_width=t["intermediate_size"],
        activation=t["hidden_act"], layer_norm_eps=t["layer_norm_eps"], eot_token_id=eot,
    )
    return CLIPConfig(vision, text, embed_dim=cfg.get("projection_dim", 512),
                      logit_scale_init=cfg.get("logit_scale_init_value", math.log(1 / 0.07)))


def config_to_hf(config: CLIPConfig) -> dict:
    """Our CLIPConfig as a transformers config.json dict (what `config_from_hf` reads back)."""
    v, t = config.vision, config.text
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": config.embed_dim,
        "logit_scale_init_value": config.logit_scale_init,
        "vision_config": dict(
            model_type="clip_vision_model", hidden_size=v.width, intermediate_size=v.mlp_width,
            num_hidden_layers=v.layers, num_attention_heads=v.heads, image_size=v.image_size,
            patch_size=v.patch_size, hidden_act=v.activation, layer_norm_eps=v.layer_norm_eps,
            projection_dim=config.embed_dim,
        ),
        "text_config": dict(
            model_type="clip_text_model", vocab_size=t.vocab_size, hidden_size=t.width,
            intermediate_size=t.mlp_width, num_hidden_layers=t.layers, num_attention_heads=t.heads,
            max_position_embeddings=t.context_length, hidden_act=t.activation, layer_norm_eps=t.layer_norm_eps,
            eos_token_id=t.eot_token_id, bos_token_id=t.eot_token_id - 1, pad_token_id=1,
            projection_dim=config.embed_dim,
        ),
    }


HEAD_WIDTH = 64  # every released CLIP uses 64-wide attention heads; weights alone cannot tell the head count


def infer_config(sd: dict) -> CLIPConfig:
    """Sizes read off the tensors' shapes, for a transformers-layout file that came without config.json.

    What shapes cannot tell is assumed as OpenAI released it: 64-wide heads, quick_gelu, eps 1e-5.
    """
    def count_layers(tower):
        return sum(1 for k in sd if k.startswith(f"{tower}.encoder.layers.") and k.endswith(".layer_norm1.weight"))

    patch = sd["vision_model.embeddings.patch_embedding.weight"]  # (width, 3, patch, patch)
    grid = math.isqrt(sd["vision_model.embeddings.position_embedding.weight"].shape[0] - 1)
    vw, tw = patch.shape[0], sd["text_model.embeddings.token_embedding.weight"].shape[1]
    vision = VisionConfig(
        image_size=grid * patch.shape[-1], patch_size=patch.shape[-1], width=vw,
        layers=count_layers("vision_model"), heads=vw // HEAD_WIDTH,
        mlp_width=sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
    )
    text = TextConfig(
        vocab_size=sd["text_model.embeddings.token_embedding.weight"].shape[0],
        context_length=sd["text_model.embeddings.position_embedding.weight"].shape[0], width=tw,
        layers=count_layers("text_model"), heads=tw // HEAD_WIDTH,
        mlp_width=sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
    )
    return CLIPConfig(vision, text, embed_dim=sd["text_projection.weight"].shape[0])


def is_other_librarys_config(path) -> bool:
    """True for a config.json that is valid JSON but no transformers CLIP config, such as timm's in the
    timm/*_clip_* repositories (it names an "architecture" and has no towers). An unreadable file is not
    judged here: loading it reports the problem."""
    try:
        cfg = json.loads(Path(path).read_text())
    except (ValueError, OSError):
        return False
    is_clip = isinstance(cfg, dict) and (
        cfg.get("model_type") == "clip" or any(f"{tower}_config" in cfg for tower in ("vision", "text"))
    )
    return not is_clip
