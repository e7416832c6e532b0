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
from miniclip.errors import CheckpointError

from .shapes import CONFIG_HINT
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
# transformers' activation names (its ACT2FN) that miniclip implements. gelu_new is the tanh approximation
# written out; gelu_pytorch_tanh is torch's kernel for it.
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}

# One rule for every field: those above are read; these leave a CLIP forward pass unchanged (output flags,
# training-only dropout and init scales, generation and label settings, bookkeeping) and take any value; a
# few must hold one value; any other field is refused by name, never skipped.
NO_EFFECT = {
    "_name_or_path", "_commit_hash", "_attn_implementation", "transformers_version", "architectures", "model_type",
    "dtype", "torch_dtype", "use_bfloat16", "torchscript", "return_dict", "output_hidden_states",
    "output_attentions", "output_scores", "return_dict_in_generate", "attention_dropout", "dropout",
    "hidden_dropout_prob", "initializer_range", "initializer_factor", "gradient_checkpointing", "projection_dim",
    "logit_scale_init_value", "id2label", "label2id", "num_labels", "problem_type", "finetuning_task",
    "task_specific_params", "tokenizer_class", "prefix", "bos_token_id", "pad_token_id", "sep_token_id",
    "decoder_start_token_id", "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "add_cross_attention",
    "cross_attention_hidden_size", "tie_encoder_decoder", "tie_word_embeddings", "tf_legacy_loss",
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
    "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens",
}
MUST_BE = {"num_channels": 3, "pruned_heads": {}}  # RGB input; no attention heads removed
READ = {
    "model": {"projection_dim", "logit_scale_init_value", "vision_config", "text_config", "vision_config_dict",
              "text_config_dict"},
    "vision": set(VISION_DEFAULTS),
    "text": set(TEXT_DEFAULTS),
}


def check_fields(fields: dict, part: str, where: str) -> None:
    """Refuses, by name, every field of `where` that miniclip neither reads nor knows to be without effect."""
    read = READ[part]
    unknown = sorted(k for k in fields if k not in read and k not in NO_EFFECT and k not in MUST_BE)
    wrong = [f"{k}={fields[k]!r} (miniclip implements {v!r})" for k, v in MUST_BE.items()
             if k in fields and fields[k] not in (v, None)]
    if unknown or wrong:
        raise CheckpointError(
            f"{where} sets fields that change the model and that miniclip does not implement: "
            + ", ".join([f"{k}={fields[k]!r}" for k in unknown] + wrong)
        )


def tower_fields(cfg: dict, name: str, defaults: dict) -> dict:
    # Files written by early transformers versions keep the non-default values in `text_config_dict`
    # (and `vision_config_dict`), which transformers lets override `text_config`.
    given = {**(cfg.get(f"{name}_config") or {}), **(cfg.get(f"{name}_config_dict") or {})}
    check_fields(given, name, f"config.json {name}_config")
    return {**defaults, **given}


def activation(name: str, tower: str) -> str:
    if name not in ACTIVATIONS:
        raise CheckpointError(
            f"config.json {tower}_config.hidden_act={name!r}: miniclip implements {list(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def config_from_hf(cfg: dict) -> CLIPConfig:
    """A transformers CLIPConfig, as a dict read from config.json, to our CLIPConfig."""
    check_fields(cfg, "model", "config.json")
    v = tower_fields(cfg, "vision", VISION_DEFAULTS)
    t = tower_fields(cfg, "text", TEXT_DEFAULTS)
    vision = VisionConfig(
        image_size=v["image_size"], patch_size=v["patch_size"], width=v["hidden_size"],
        layers=v["num_hidden_layers"], heads=v["num_attention_heads"], mlp_width=v["intermediate_size"],
        activation=activation(v["hidden_act"], "vision"), layer_norm_eps=v["layer_norm_eps"],
    )
    # The legacy eos_token_id 2 predates the fix in transformers PR #24773; with it, transformers pools at
    # argmax(input_ids), i.e. at the largest id of the vocabulary, which is <|endoftext|>.
    eot = t["vocab_size"] - 1 if t["eos_token_id"] == LEGACY_EOS_TOKEN_ID else t["eos_token_id"]
    text = TextConfig(
        vocab_size=t["vocab_size"], context_length=t["max_position_embeddings"], width=t["hidden_size"],
        layers=t["num_hidden_layers"], heads=t["num_attention_heads"], mlp_width=t["intermediate_size"],
        activation=activation(t["hidden_act"], "text"), layer_norm_eps=t["layer_norm_eps"], eot_token_id=eot,
    )
    return CLIPConfig(vision, text, embed_dim=cfg.get("projection_dim", 512),
                      logit_scale_init=cfg.get("logit_scale_init_value", math.log(1 / 0.07)))


def cannot_describe(config: CLIPConfig) -> list[str]:
    """What of `config` transformers' CLIPModel has no field for (empty: the layout describes it exactly)."""
    v, t = config.vision, config.text
    if not isinstance(v, VisionConfig):
        return ["a ResNet image encoder (transformers' CLIPModel is ViT-only)"]
    found = [f"{name}.{option}" for name, tower in (("vision", v), ("text", t))
             for option in ("layer_scale", "qk_norm") if getattr(tower, option)]
    found += [f"vision.{o}={getattr(v, o)!r}" for o, plain in VISION_PLAIN.items() if getattr(v, o) != plain]
    found += [f"text.{o}={getattr(t, o)!r}" for o, plain in TEXT_PLAIN.items() if getattr(t, o) != plain]
    if not isinstance(v.image_size, int) or not isinstance(v.patch_size, int):
        found.append(f"non-square images or patches (image_size={v.image_size}, patch_size={v.patch_size})")
    if t.eot_token_id == LEGACY_EOS_TOKEN_ID and t.vocab_size - 1 != LEGACY_EOS_TOKEN_ID:
        found.append("text.eot_token_id=2, which transformers reads as its legacy 'pool at argmax' marker")
    return found


# The options of miniclip's config that transformers' CLIP has only in their plain (OpenAI) setting.
VISION_PLAIN = dict(ln_pre=True, pool="tok", final_ln_after_pool=False, attn_pool_queries=0)
TEXT_PLAIN = dict(causal=True, pool="eot", proj_bias=False)


def config_to_hf(config: CLIPConfig) -> dict:
    """Our CLIPConfig as a transformers config.json dict (what `config_from_hf` reads back); see cannot_describe."""
    v, t = config.vision, config.text
    hf_act = {ours: theirs for theirs, ours in reversed(ACTIVATIONS.items())}  # gelu_tanh -> gelu_pytorch_tanh
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": config.embed_dim,
        "logit_scale_init_value": config.logit_scale_init,
        "vision_config": dict(
            model_type="clip_vision_model", hidden_size=v.width, intermediate_size=v.mlp_width,
            num_hidden_layers=v.layers, num_attention_heads=v.heads, image_size=v.image_size,
            patch_size=v.patch_size, hidden_act=hf_act[v.activation], layer_norm_eps=v.layer_norm_eps,
            projection_dim=config.embed_dim,
        ),
        "text_config": dict(
            model_type="clip_text_model", vocab_size=t.vocab_size, hidden_size=t.width,
            intermediate_size=t.mlp_width, num_hidden_layers=t.layers, num_attention_heads=t.heads,
            max_position_embeddings=t.context_length, hidden_act=hf_act[t.activation], layer_norm_eps=t.layer_norm_eps,
            eos_token_id=t.eot_token_id, bos_token_id=t.eot_token_id - 1, pad_token_id=1,
            projection_dim=config.embed_dim,
        ),
    }


def infer_config(sd: dict) -> CLIPConfig:
    """A transformers-layout file without config.json: refused. Its shapes give the sizes, but not the head
    count, the activation or LayerNorm's eps, and transformers' layout has no convention for them (unlike
    OpenAI's, whose build_model fixes them): a guess would load a 6-head tower as 3 heads, silently."""
    raise CheckpointError(
        "these transformers-layout weights came without config.json, and the head count, activation and "
        f"LayerNorm eps cannot be read off tensor shapes; {CONFIG_HINT}"
    )


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
