"""OpenAI's layout: the tensor names of clip/model.py, in OpenAI's released .pt files and open_clip's files.

OpenAI released its checkpoints as TorchScript archives (a zip with `code/` and `constants.pkl` beside the
tensors); people also pass around plain state dicts with the same names. Both are read as tensors only:
an archive by weights/torchscript.py, which unpickles its tensors and never loads its code.

What differs from miniclip's names, all in the tables below:
- OpenAI's names: conv1 (the patch embedding), positional_embedding, attn.in_proj_*/out_proj, mlp.c_fc/c_proj,
  transformer.resblocks, and the text tower at the top level (token_embedding, ln_final, ...);
- the two projections are stored as (width, embed_dim) matrices used as `x @ P`: transposed against our
  nn.Linear weights;
- q, k and v are already fused into one in_proj tensor, in the order q, k, v, as ours;
- the released files carry three integers as tensors (input_resolution, context_length, vocab_size), and
  the ResNets' BatchNorm step counters (num_batches_tracked), none of which is a weight.

Sizes are not stored anywhere: `infer_config` reads them off the shapes, as OpenAI's build_model does.
"""

from miniclip.config import (
    EOT_TOKEN_ID, OPENAI_TOKENIZER, RESNET_DOWNSAMPLING, VOCAB_SIZE, CLIPConfig, ResNetConfig, TextConfig, VisionConfig,
)
from miniclip.errors import CheckpointError

from .shapes import CONFIG_HINT, count_blocks, heads, square_grid
from .table import Plan, renamed, split, transposed

# (ours, OpenAI's) outside the residual blocks
TOP_LEVEL = [
    ("logit_scale", "logit_scale"),
    ("text.token_embedding.weight", "token_embedding.weight"),
    ("text.position_embedding", "positional_embedding"),
    ("text.ln_final.weight", "ln_final.weight"),
    ("text.ln_final.bias", "ln_final.bias"),
]
VIT_TOP_LEVEL = [
    ("visual.patch_embed.weight", "visual.conv1.weight"),
    ("visual.class_embedding", "visual.class_embedding"),
    ("visual.position_embedding", "visual.positional_embedding"),
    ("visual.ln_post.weight", "visual.ln_post.weight"),
    ("visual.ln_post.bias", "visual.ln_post.bias"),
]
LN_PRE = [("visual.ln_pre.weight", "visual.ln_pre.weight"), ("visual.ln_pre.bias", "visual.ln_pre.bias")]
# OpenAI multiplies x @ proj with proj of shape (width, embed_dim); nn.Linear stores (embed_dim, width).
TEXT_PROJECTION = ("text.proj.weight", "text_projection")
VIT_PROJECTION = ("visual.proj.weight", "visual.proj")
# open_clip's proj_bias option makes the text projection an nn.Linear: (embed_dim, width), as ours.
TEXT_PROJECTION_WITH_BIAS = [("text.proj.weight", "text_projection.weight"), ("text.proj.bias", "text_projection.bias")]

# Inside block i: (ours under `{tower}.blocks.{i}.`, OpenAI's under `{prefix}transformer.resblocks.{i}.`)
BLOCK = [
    ("ln_1.weight", "ln_1.weight"),
    ("ln_1.bias", "ln_1.bias"),
    ("attn.qkv.weight", "attn.in_proj_weight"),  # q, k, v stacked along dim 0: the same as ours
    ("attn.qkv.bias", "attn.in_proj_bias"),
    ("attn.proj.weight", "attn.out_proj.weight"),
    ("attn.proj.bias", "attn.out_proj.bias"),
    ("ln_2.weight", "ln_2.weight"),
    ("ln_2.bias", "ln_2.bias"),
    ("mlp.fc1.weight", "mlp.c_fc.weight"),
    ("mlp.fc1.bias", "mlp.c_fc.bias"),
    ("mlp.fc2.weight", "mlp.c_proj.weight"),
    ("mlp.fc2.bias", "mlp.c_proj.bias"),
]
# open_clip's options, in the same block (names as open_clip's ResidualAttentionBlock / Attention have them)
LAYER_SCALE = [("ls_1.gamma", "ls_1.gamma"), ("ls_2.gamma", "ls_2.gamma")]
QK_NORM = [(f"attn.{ln}.{t}", f"attn.{ln}.{t}") for ln in ("ln_q", "ln_k") for t in ("weight", "bias")]
# open_clip's AttentionalPooler, under visual.attn_pool.: an nn.MultiheadAttention-like `attn` and two LayerNorms.
# Its q, k and v matrices are separate when the tokens are wider than embed_dim, stacked when they are not.
ATTN_POOL_QKV = [("q_weight", "attn.q_proj_weight"), ("k_weight", "attn.k_proj_weight"),
                 ("v_weight", "attn.v_proj_weight")]
ATTN_POOL_STACKED_QKV = "attn.in_proj_weight"
ATTN_POOL = [
    ("query", "query"),
    ("qkv_bias", "attn.in_proj_bias"),
    ("proj.weight", "attn.out_proj.weight"),
    ("proj.bias", "attn.out_proj.bias"),
] + [(f"{ln}.{t}", f"{ln}.{t}") for ln in ("ln_q", "ln_k") for t in ("weight", "bias")]

# The ResNet (miniclip/resnet.py) uses OpenAI's names, except for two spellings.
BN_TENSORS = ["weight", "bias", "running_mean", "running_var"]
BN_COUNTER = "num_batches_tracked"  # training-step count, ignored: see resnet.BatchNorm
RESNET_STEM = [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]
BOTTLENECK = [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]
# OpenAI's shortcut is nn.Sequential(("-1", AvgPool2d), ("0", conv), ("1", bn)); ours names the parts.
DOWNSAMPLE = [("downsample.conv", "downsample.0"), ("downsample.bn", "downsample.1")]
ATTNPOOL_LINEARS = ["q_proj", "k_proj", "v_proj", "c_proj"]

# Integers that OpenAI's model objects carried as attributes, saved in the released files as 0-d tensors.
IGNORED = {"input_resolution", "context_length", "vocab_size"}


def plan(config: CLIPConfig) -> Plan:
    """Every miniclip tensor and OpenAI's tensor it is, for a model of this config (ViT or ResNet)."""
    entries = [renamed(ours, theirs) for ours, theirs in TOP_LEVEL]
    if config.text.proj_bias:
        entries += [renamed(ours, theirs) for ours, theirs in TEXT_PROJECTION_WITH_BIAS]
    else:
        entries.append(transposed(*TEXT_PROJECTION))
    ignored = set(IGNORED)
    towers = [("text", "", config.text)]  # (ours, OpenAI's prefix, config): OpenAI's text tower is top-level
    if isinstance(config.vision, ResNetConfig):
        resnet_entries, counters = resnet_plan(config.vision)
        entries += resnet_entries
        ignored |= counters
    else:
        v = config.vision
        top = VIT_TOP_LEVEL + LN_PRE * v.ln_pre
        if v.attn_pool_queries:
            stacked = v.width == config.embed_dim
            top += [(f"visual.attn_pool.{ours}", f"visual.attn_pool.{theirs}")
                    for ours, theirs in ATTN_POOL + ATTN_POOL_QKV * (not stacked)]
            if stacked:
                entries += split([f"visual.attn_pool.{ours}" for ours, _ in ATTN_POOL_QKV],
                                 f"visual.attn_pool.{ATTN_POOL_STACKED_QKV}")
        entries += [renamed(ours, theirs) for ours, theirs in top] + [transposed(*VIT_PROJECTION)]
        towers.append(("visual", "visual.", v))
    for tower, prefix, cfg in towers:
        block = BLOCK + LAYER_SCALE * cfg.layer_scale + QK_NORM * cfg.qk_norm
        for i in range(cfg.layers):
            entries += [renamed(f"{tower}.blocks.{i}.{ours}", f"{prefix}transformer.resblocks.{i}.{theirs}")
                        for ours, theirs in block]
    return Plan("openai", entries, ignored)


def resnet_plan(cfg: ResNetConfig):
    """The ResNet's entries, and the names of its BatchNorm step counters (to ignore)."""
    pairs = []  # (our module, OpenAI's module, BatchNorm or not), all under `visual.`

    def conv_bn(ours_conv, ours_bn, theirs_conv=None, theirs_bn=None):
        pairs.extend([(ours_conv, theirs_conv or ours_conv, False), (ours_bn, theirs_bn or ours_bn, True)])

    for c, bn in RESNET_STEM:
        conv_bn(c, bn)
    for s, blocks in enumerate(cfg.layers, start=1):
        for i in range(blocks):
            block = f"layer{s}.{i}."
            for c, bn in BOTTLENECK:
                conv_bn(block + c, block + bn)
            if i == 0:  # the first block of every stage changes the width (and from stage 2, the size)
                (oc, tc), (ob, tb) = DOWNSAMPLE
                conv_bn(block + oc, block + ob, block + tc, block + tb)
    entries, counters = [], set()
    for ours, theirs, is_bn in pairs:
        for t in BN_TENSORS if is_bn else ["weight"]:  # convolutions have no bias
            entries.append(renamed(f"visual.{ours}.{t}", f"visual.{theirs}.{t}"))
        if is_bn:
            counters.add(f"visual.{theirs}.{BN_COUNTER}")
    entries.append(renamed("visual.attnpool.position_embedding", "visual.attnpool.positional_embedding"))
    entries += [renamed(f"visual.attnpool.{name}.{t}", f"visual.attnpool.{name}.{t}")
                for name in ATTNPOOL_LINEARS for t in ("weight", "bias")]
    return entries, counters


# -----------------------------------------------------------------------------
# What the layout can describe: OpenAI's files hold tensors only, and every reader (OpenAI's build_model,
# miniclip's infer_config) fills in the rest with OpenAI's conventions.

OPENAI_PLAIN = dict(activation="quick_gelu", layer_norm_eps=1e-5, layer_scale=False, qk_norm=False)
VISION_PLAIN = dict(ln_pre=True, pool="tok", final_ln_after_pool=False, attn_pool_queries=0)
TEXT_PLAIN = dict(causal=True, pool="eot", proj_bias=False, vocab_size=VOCAB_SIZE, eot_token_id=EOT_TOKEN_ID,
                  tokenizer=OPENAI_TOKENIZER)


def cannot_describe(config: CLIPConfig) -> list[str]:
    """What of `config` a reader of OpenAI's layout would get wrong (empty: the layout describes it exactly).

    The context length is read off the position table's shape by every reader, so any value is described.
    """
    v, t = config.vision, config.text
    towers = [("text", t, TEXT_PLAIN)]
    if isinstance(v, VisionConfig):
        towers.append(("vision", v, VISION_PLAIN))
        if not isinstance(v.image_size, int) or not isinstance(v.patch_size, int):
            return [f"non-square images or patches (vision.image_size={v.image_size}, patch_size={v.patch_size})"]
    elif v.head_width != HEAD_WIDTH:
        return [f"vision.head_width={v.head_width} (OpenAI's readers assume {HEAD_WIDTH})"]
    found = []
    for name, tower, plain in towers:
        found += [f"{name}.{o}={getattr(tower, o)!r} (OpenAI's readers assume {p!r})"
                  for o, p in {**OPENAI_PLAIN, **plain}.items() if getattr(tower, o) != p]
        if tower.width != tower.heads * HEAD_WIDTH:
            found.append(f"{name} heads {tower.width // tower.heads} wide (OpenAI's readers assume {HEAD_WIDTH})")
    return found


# -----------------------------------------------------------------------------
# Sizes from shapes, as clip/model.py build_model infers them

HEAD_WIDTH = 64  # build_model: heads = width // 64, in both towers and the ResNet's attention pool
CONVENTION = "OpenAI's layout, as its build_model reads it"
# Tensors that no OpenAI model has: a file that holds them is open_clip's, and only its config says how the
# options they belong to were set (pooling, masking, activation), so it is not read by OpenAI's rules.
NOT_OPENAI = {"ls_1.gamma": "layer scale", "attn.ln_q.weight": "qk_norm", "visual.attn_pool.": "an attentional "
              "pooler", "text_projection.weight": "a text projection with a bias"}


def infer_config(sd: dict) -> CLIPConfig:
    """The model's sizes read off an OpenAI-layout state dict's shapes, with OpenAI's conventions for the rest.

    What shapes cannot tell is OpenAI's: 64-wide heads, quick_gelu, eps 1e-5, class-token and end-of-text
    pooling, a causal text tower. A file with tensors OpenAI's models never had is refused: it is open_clip's,
    and its open_clip_config.json (or config=) must say how it was built.
    """
    found = {what for key in sd for marker, what in NOT_OPENAI.items() if marker in key}
    if "visual.proj" in sd and "visual.ln_pre.weight" not in sd:
        found.add("no ln_pre")
    if found:
        raise CheckpointError(
            f"these weights have {', '.join(sorted(found))}, which no OpenAI model has, and came without "
            f"open_clip_config.json: the options that shapes cannot show (pooling, attention mask, activation, "
            f"LayerNorm eps) are unknown; {CONFIG_HINT}"
        )
    vision = infer_vit(sd) if "visual.proj" in sd else infer_resnet(sd)
    width = sd["ln_final.weight"].shape[0]
    text = TextConfig(
        vocab_size=sd["token_embedding.weight"].shape[0], context_length=sd["positional_embedding"].shape[0],
        width=width, layers=count_blocks(sd, "transformer.resblocks.{}.ln_1.weight"),
        heads=heads(width, HEAD_WIDTH, "text", CONVENTION),
        mlp_width=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
    )
    return CLIPConfig(vision, text, embed_dim=sd["text_projection"].shape[1])


def infer_vit(sd: dict) -> VisionConfig:
    width, _, patch, _ = sd["visual.conv1.weight"].shape  # (width, 3, patch, patch)
    grid = square_grid(sd["visual.positional_embedding"].shape[0], "visual.positional_embedding")
    return VisionConfig(
        image_size=grid * patch, patch_size=patch, width=width, heads=heads(width, HEAD_WIDTH, "vision", CONVENTION),
        layers=count_blocks(sd, "visual.transformer.resblocks.{}.ln_1.weight"),
        mlp_width=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
    )


def infer_resnet(sd: dict) -> ResNetConfig:
    # grid * grid + 1 positions: the mean token has one too
    grid = square_grid(sd["visual.attnpool.positional_embedding"].shape[0], "visual.attnpool.positional_embedding")
    return ResNetConfig(
        image_size=grid * RESNET_DOWNSAMPLING,
        layers=tuple(count_blocks(sd, f"visual.layer{s}.{{}}.conv1.weight") for s in (1, 2, 3, 4)),
        width=sd["visual.layer1.0.conv1.weight"].shape[0],
    )
