"""OpenAI's layout: the tensor names of clip/model.py, in OpenAI's released .pt files and open_clip's files.

OpenAI released its checkpoints as TorchScript archives (a zip with `code/` and `constants.pkl` beside the
tensors); people also pass around plain state dicts with the same names. Both are read here as tensors
only: an archive is opened with `torch.jit.load` and only its state dict is kept, its code never run.

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

import math
import warnings
import zipfile
from pathlib import Path

import torch

from miniclip.config import RESNET_DOWNSAMPLING, CLIPConfig, ResNetConfig, TextConfig, VisionConfig
from miniclip.errors import CheckpointError

from .table import Plan, renamed, transposed

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
    ("visual.ln_pre.weight", "visual.ln_pre.weight"),
    ("visual.ln_pre.bias", "visual.ln_pre.bias"),
    ("visual.ln_post.weight", "visual.ln_post.weight"),
    ("visual.ln_post.bias", "visual.ln_post.bias"),
]
# OpenAI multiplies x @ proj with proj of shape (width, embed_dim); nn.Linear stores (embed_dim, width).
TEXT_PROJECTION = ("text.proj.weight", "text_projection")
VIT_PROJECTION = ("visual.proj.weight", "visual.proj")

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
    entries = [renamed(ours, theirs) for ours, theirs in TOP_LEVEL] + [transposed(*TEXT_PROJECTION)]
    ignored = set(IGNORED)
    towers = [("text", "", config.text)]  # (ours, OpenAI's prefix, config): OpenAI's text tower is top-level
    if isinstance(config.vision, ResNetConfig):
        resnet_entries, counters = resnet_plan(config.vision)
        entries += resnet_entries
        ignored |= counters
    else:
        entries += [renamed(ours, theirs) for ours, theirs in VIT_TOP_LEVEL] + [transposed(*VIT_PROJECTION)]
        towers.append(("visual", "visual.", config.vision))
    for tower, prefix, cfg in towers:
        for i in range(cfg.layers):
            entries += [renamed(f"{tower}.blocks.{i}.{ours}", f"{prefix}transformer.resblocks.{i}.{theirs}")
                        for ours, theirs in BLOCK]
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
# Sizes from shapes, as clip/model.py build_model infers them

HEAD_WIDTH = 64  # build_model: heads = width // 64, in both towers and the ResNet's attention pool


def infer_config(sd: dict) -> CLIPConfig:
    """The model's sizes read off an OpenAI-layout state dict's shapes.

    What shapes cannot tell is OpenAI's: 64-wide heads and quick_gelu (open_clip's files, which may differ,
    come with open_clip_config.json and are read by open_clip.config_from_open_clip instead).
    """
    def count(template):  # the number of blocks: keys template.format(0), template.format(1), ...
        n = 0
        while template.format(n) in sd:
            n += 1
        return n

    vision = infer_vit(sd, count) if "visual.proj" in sd else infer_resnet(sd, count)
    width = sd["ln_final.weight"].shape[0]
    text = TextConfig(
        vocab_size=sd["token_embedding.weight"].shape[0], context_length=sd["positional_embedding"].shape[0],
        width=width, layers=count("transformer.resblocks.{}.ln_1.weight"), heads=heads(width, "text"),
        mlp_width=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
    )
    return CLIPConfig(vision, text, embed_dim=sd["text_projection"].shape[1])


def heads(width: int, tower: str) -> int:
    if width % HEAD_WIDTH:
        raise CheckpointError(
            f"the {tower} tower is {width} wide, not a multiple of OpenAI's {HEAD_WIDTH}-wide heads, so its head "
            "count cannot be inferred from the weights: pass config=CLIPConfig(...) with the sizes"
        )
    return width // HEAD_WIDTH


def infer_vit(sd: dict, count) -> VisionConfig:
    width, _, patch, _ = sd["visual.conv1.weight"].shape  # (width, 3, patch, patch)
    grid = math.isqrt(sd["visual.positional_embedding"].shape[0] - 1)  # the class token has a position too
    return VisionConfig(
        image_size=grid * patch, patch_size=patch, width=width, heads=heads(width, "vision"),
        layers=count("visual.transformer.resblocks.{}.ln_1.weight"),
        mlp_width=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
    )


def infer_resnet(sd: dict, count) -> ResNetConfig:
    positions = sd["visual.attnpool.positional_embedding"].shape[0]  # grid * grid + 1 (the mean token)
    grid = math.isqrt(positions - 1)
    if grid * grid + 1 != positions:
        raise CheckpointError(f"visual.attnpool.positional_embedding has {positions} rows, not a square grid + 1")
    return ResNetConfig(
        image_size=grid * RESNET_DOWNSAMPLING,
        layers=tuple(count(f"visual.layer{s}.{{}}.conv1.weight") for s in (1, 2, 3, 4)),
        width=sd["visual.layer1.0.conv1.weight"].shape[0],
    )


# -----------------------------------------------------------------------------
# TorchScript archives (OpenAI's released .pt files)


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip whose one top folder holds `code/` and `constants.pkl`; the zip that
    torch.save writes holds only `data.pkl`, `data/` and `version`."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        inside = [name.split("/", 1)[-1] for name in z.namelist()]
    return any(name == "constants.pkl" or name.startswith("code/") for name in inside)


def read_torchscript(path: Path) -> dict:
    """The tensors of a TorchScript archive. The scripted module is dropped at once and never called."""
    try:
        with warnings.catch_warnings():  # torch 2.9+ deprecates TorchScript; OpenAI's files exist only as such
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - torch.jit.load raises RuntimeError and others; all mean "unreadable"
        raise CheckpointError(f"{path} looks like a TorchScript archive but torch.jit.load cannot read it: {e}") from e
    return dict(module.state_dict())
