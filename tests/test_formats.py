"""Every layout OpenAI's weights are published in, ResNets included, against the code that published them.

The oracle is OpenAI's own clip/model.py (tests/oracles.py): each case builds its model with random weights
(every tensor, BatchNorm statistics included), takes its state dict as "the release", writes it in each
format (a torch.save state dict, safetensors, a TorchScript archive traced from the oracle like OpenAI's
.pt files, open_clip's Hub layout) and checks that miniclip loads each to the oracle's numbers.

Tolerances: 1e-5 on unit-normalised embeddings and 1e-4 on logits (100 x cosine). Both models compute in
float32 with the same operations in different orders (fused q/k/v vs nn.MultiheadAttention, one query
in the attention pool, the text cut after its last end-of-text token); they differ by ~1e-6.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from checkpoints import reference_model, write_checkpoint, write_hub_cache
from compare import assert_close, max_diff
from oracles import openai_model_module
from safetensors.torch import load_file, save_file

from miniclip import CLIP
from miniclip.config import PRESETS, RESNET_PRESETS, ResNetConfig
from miniclip.errors import CheckpointError
from miniclip.weights import convert, openai, save

EMBED_TOL = dict(atol=1e-5, rtol=0)
LOGIT_TOL = dict(atol=1e-4, rtol=0)
SOT, EOT = 49406, 49407
VOCAB, CONTEXT = 49408, 77
OPENAI_INTEGERS = ("input_resolution", "context_length", "vocab_size")  # 0-d tensors in OpenAI's .pt files


@dataclass
class Case:
    """One architecture: OpenAI's constructor arguments (clip/model.py CLIP) and what to write it as."""

    embed_dim: int
    image_size: int
    vision_layers: int | tuple  # a tuple of four stage depths: the ResNet
    vision_width: int
    patch_size: int | None
    text_width: int
    text_layers: int
    formats: list = field(default_factory=lambda: ["pt", "safetensors", "torchscript"])

    def oracle_args(self):
        return (self.embed_dim, self.image_size, self.vision_layers, self.vision_width, self.patch_size, CONTEXT,
                VOCAB, self.text_width, self.text_width // 64, self.text_layers)


VIT = ["pt", "safetensors", "torchscript", "open_clip"]
CASES = {
    "tiny-vit": Case(16, 32, 2, 64, 8, 64, 2, VIT),
    "ViT-B/32": Case(512, 224, 12, 768, 32, 512, 12, VIT),
    "tiny-resnet": Case(16, 64, (1, 2, 1, 1), 8, None, 64, 2),
    "RN50": Case(1024, 224, (3, 4, 6, 3), 64, None, 512, 12),
}


@torch.no_grad()
def randomise(model, seed):
    """Every tensor random, so a tensor loaded into the wrong place (or not at all) shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        noise = torch.randn(t.shape, generator=g)
        if name.endswith("num_batches_tracked"):
            continue
        if name.endswith("running_var"):
            t.copy_(1 + 0.1 * noise.abs())
        elif t.ndim == 1 and name.endswith(".weight"):  # LayerNorm and BatchNorm scales: near 1
            t.copy_(1 + 0.1 * noise)
        elif t.ndim <= 1:  # biases, BatchNorm means, the class embedding
            t.copy_(0.02 * noise)
        else:  # matrices and convolutions, scaled by their fan-in
            t.copy_(noise * t[0].numel() ** -0.5)
    model.logit_scale.fill_(math.log(100))


def probe_inputs(image_size):
    g = torch.Generator().manual_seed(1)
    px = torch.randn(2, 3, image_size, image_size, generator=g)
    ids = torch.zeros(2, CONTEXT, dtype=torch.long)
    ids[:, 0] = SOT
    ids[0, 1:4] = torch.tensor([320, 1125, 539])
    ids[0, 4] = EOT
    ids[1, 1:9] = torch.randint(1, SOT, (8,), generator=g)
    ids[1, 9] = EOT
    return px, ids


@torch.no_grad()
def outputs(encode_image, encode_text, logit_scale, image_size):
    """Unit-normalised image and text embeddings and the logits, the same way for every model."""
    px, ids = probe_inputs(image_size)
    image, text = F.normalize(encode_image(px), dim=-1), F.normalize(encode_text(ids), dim=-1)
    return image, text, logit_scale.exp() * image @ text.t()


def assert_same_outputs(ours, theirs, what):
    assert_close(ours[0], theirs[0], **EMBED_TOL, what=f"{what}: image embeddings")
    assert_close(ours[1], theirs[1], **EMBED_TOL, what=f"{what}: text embeddings")
    assert_close(ours[2], theirs[2], **LOGIT_TOL, what=f"{what}: logits")


@dataclass
class Release:
    case: Case
    state_dict: dict  # OpenAI's layout, float32
    oracle: torch.nn.Module
    expected: tuple  # the oracle's outputs
    folder: Path


pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # tracing OpenAI's model


@pytest.fixture(scope="module", params=list(CASES))
def release(request, tmp_path_factory):
    """OpenAI's model at the case's size with random weights, rebuilt by build_model from its state dict."""
    M = openai_model_module()
    case = CASES[request.param]
    torch.manual_seed(0)
    source = M.CLIP(*case.oracle_args())
    randomise(source, seed=0)
    sd = {k: v.detach().clone() for k, v in source.state_dict().items()}
    del source
    # build_model infers the sizes from the shapes, as for OpenAI's files, and rounds the weights to fp16;
    # loading the float32 tensors again undoes the rounding.
    oracle = M.build_model(dict(sd)).float()
    oracle.load_state_dict(sd)
    expected = outputs(oracle.encode_image, oracle.encode_text, oracle.logit_scale, case.image_size)
    folder = tmp_path_factory.mktemp(request.param.replace("/", "-"))
    return Release(case, sd, oracle, expected, folder)


def write_format(r: Release, fmt: str) -> Path:
    """The release as one format; returns what to hand to CLIP.from_pretrained."""
    if fmt == "pt":  # a plain state dict, with the integers OpenAI's files carry
        path = r.folder / "model.pt"
        torch.save({**r.state_dict, **{k: torch.tensor(1) for k in OPENAI_INTEGERS}}, path)
    elif fmt == "safetensors":
        path = r.folder / "openai.safetensors"
        save_file(r.state_dict, path)
    elif fmt == "torchscript":  # like OpenAI's released .pt files: a traced module, code and all
        path = r.folder / "traced.pt"
        with torch.no_grad():
            traced = torch.jit.trace(r.oracle, probe_inputs(r.case.image_size), check_trace=False)
        torch.jit.save(traced, str(path))
    elif fmt == "open_clip":
        path = write_open_clip(r.folder / "open_clip", r.case, r.state_dict, quick_gelu=True)
    return path


def write_open_clip(folder: Path, case: Case, sd: dict, quick_gelu: bool, head_width: int = 64) -> Path:
    """A folder as open_clip's Hub repositories have it (e.g. timm/vit_base_patch32_clip_224.openai)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": {
            "embed_dim": case.embed_dim, "quick_gelu": quick_gelu,
            "vision_cfg": {"image_size": case.image_size, "layers": case.vision_layers, "width": case.vision_width,
                           "patch_size": case.patch_size, "head_width": head_width},
            "text_cfg": {"context_length": CONTEXT, "vocab_size": VOCAB, "width": case.text_width,
                         "heads": case.text_width // 64, "layers": case.text_layers},
        },
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    save_file(sd, folder / "open_clip_model.safetensors")
    return folder


def test_every_format_loads_to_the_oracles_numbers(release):
    for fmt in release.case.formats:
        model = CLIP.from_pretrained(write_format(release, fmt))
        ours = outputs(model.encode_image, model.encode_text, model.logit_scale, release.case.image_size)
        assert_same_outputs(ours, release.expected, f"{fmt} vs OpenAI's model")
        logits_per_image, _ = model(*probe_inputs(release.case.image_size))  # forward() itself, too
        assert_close(logits_per_image.detach(), release.expected[2], **LOGIT_TOL, what=f"{fmt}: forward")


def test_openai_round_trip_is_bit_exact_and_loads_in_openais_model(release, tmp_path):
    model = CLIP.from_pretrained(write_format(release, "safetensors"))
    [file] = save(model, tmp_path / "again.pt", "openai")
    written = torch.load(file, weights_only=True)
    expected = {k: v for k, v in release.state_dict.items() if not k.endswith("num_batches_tracked")}
    assert written.keys() == expected.keys()
    for k in expected:
        assert torch.equal(written[k], expected[k]), k
    openai_model_module().build_model(dict(written))  # OpenAI's loader takes it (strict load_state_dict)


@pytest.mark.parametrize("release", ["tiny-resnet"], indirect=True)  # the refusal needs one ResNet, not each
def test_resnets_have_no_transformers_layout(release, tmp_path):
    model = CLIP.from_pretrained(write_format(release, "safetensors"))
    with pytest.raises(CheckpointError, match=r"ResNet image encoder \(transformers' CLIPModel is ViT-only\).*--to openai"):
        save(model, tmp_path / "hf", "transformers")


# -----------------------------------------------------------------------------
# Sizes: the presets are what OpenAI's build_model infers, and ours infers the same


@pytest.mark.parametrize("name", [*PRESETS, *RESNET_PRESETS])
def test_presets_are_what_openais_build_model_infers(name):
    cfg = {**PRESETS, **RESNET_PRESETS}[name]
    with torch.device("meta"):  # shapes only: no memory, no time
        ours = CLIP(cfg)
        sd = openai.plan(cfg).from_miniclip(ours.state_dict())
        theirs = openai_model_module().build_model(dict(sd))  # strict load: every key and shape matches
    assert openai.infer_config(sd) == cfg
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(theirs)
    if isinstance(cfg.vision, ResNetConfig):
        assert theirs.visual.attnpool.num_heads == cfg.vision.heads


# -----------------------------------------------------------------------------
# LAION's sizes and activation, from open_clip_config.json, against transformers' CLIPModel

# A ViT-H/14-like shape at a small size: 80-wide vision heads (ViT-H/14: 1280 wide, 16 heads), gelu.
LAION_LIKE = dict(
    vision_config=dict(hidden_size=160, intermediate_size=640, num_hidden_layers=2, num_attention_heads=2,
                       image_size=56, patch_size=14, hidden_act="gelu"),
    text_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=2,
                     hidden_act="gelu"),
    projection_dim=96,
)
LAION_CASE = Case(96, 56, 2, 160, 14, 128, 3)


def transformers_to_openai(sd: dict, vision_layers: int, text_layers: int) -> dict:
    """transformers' CLIPModel state dict in OpenAI's (and open_clip's) names, written out independently of
    miniclip's tables."""
    out = {
        "logit_scale": sd["logit_scale"],
        "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "visual.proj": sd["visual_projection.weight"].t(),
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "text_projection": sd["text_projection.weight"].t(),
    }
    for ours, theirs in [("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")]:
        for p in ("weight", "bias"):
            out[f"visual.{ours}.{p}"] = sd[f"vision_model.{theirs}.{p}"]
    for p in ("weight", "bias"):
        out[f"ln_final.{p}"] = sd[f"text_model.final_layer_norm.{p}"]
    for hf_tower, openai_tower, n in [("vision_model", "visual.transformer", vision_layers),
                                      ("text_model", "transformer", text_layers)]:
        for i in range(n):
            h, o = f"{hf_tower}.encoder.layers.{i}.", f"{openai_tower}.resblocks.{i}."
            for p in ("weight", "bias"):
                out[f"{o}attn.in_proj_{p}"] = torch.cat([sd[f"{h}self_attn.{x}_proj.{p}"] for x in "qkv"])
                out[f"{o}attn.out_proj.{p}"] = sd[f"{h}self_attn.out_proj.{p}"]
                out[f"{o}ln_1.{p}"] = sd[f"{h}layer_norm1.{p}"]
                out[f"{o}ln_2.{p}"] = sd[f"{h}layer_norm2.{p}"]
                out[f"{o}mlp.c_fc.{p}"] = sd[f"{h}mlp.fc1.{p}"]
                out[f"{o}mlp.c_proj.{p}"] = sd[f"{h}mlp.fc2.{p}"]
    return {k: v.contiguous() for k, v in out.items()}


def test_laion_like_open_clip_config_matches_transformers(tmp_path):
    ref = reference_model(LAION_LIKE, seed=3)
    sd = transformers_to_openai(ref.state_dict(), 2, 3)
    folder = write_open_clip(tmp_path / "laion", LAION_CASE, sd, quick_gelu=False, head_width=80)
    model = CLIP.from_pretrained(folder)
    assert model.config.vision.heads == 2 and model.config.vision.activation == "gelu"
    theirs = outputs(lambda px: ref.get_image_features(pixel_values=px).pooler_output,
                     lambda ids: ref.get_text_features(input_ids=ids).pooler_output, ref.logit_scale, 56)
    ours = outputs(model.encode_image, model.encode_text, model.logit_scale, 56)
    assert_same_outputs(ours, theirs, "LAION-like open_clip checkpoint vs transformers")


# -----------------------------------------------------------------------------
# The Hub: timm/vit_base_patch32_clip_224.openai, offline from the cache

TIMM_REPO = "timm/vit_base_patch32_clip_224.openai"
TIMM_COMMIT = "9b1fa8bb2f3e6f0c3a1c1f6d9d5a0e0c8a7b6c5d"


def test_timm_open_clip_repository_loads_from_the_cache(tmp_path, monkeypatch):
    """The repository holds timm's own config.json and model.safetensors beside open_clip's files: miniclip
    must pass over timm's and read open_clip's."""
    from huggingface_hub import constants

    case = CASES["tiny-vit"]  # the layout is what is tested here; B/32 sizes are tested above
    torch.manual_seed(0)
    source = openai_model_module().CLIP(*case.oracle_args())
    randomise(source, seed=5)
    sd = {k: v.detach().clone() for k, v in source.state_dict().items()}
    folder = write_open_clip(tmp_path / "repo", case, sd, quick_gelu=True)
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_base_patch32_clip_224", "num_classes": 512}))
    save_file({"patch_embed.proj.weight": torch.zeros(2, 3, 1, 1)}, folder / "model.safetensors")
    cache = tmp_path / "hf_cache"
    write_hub_cache(cache, TIMM_REPO, folder, TIMM_COMMIT, absent=("open_clip_pytorch_model.bin",))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    model = CLIP.from_pretrained(TIMM_REPO)
    expected = outputs(source.encode_image, source.encode_text, source.logit_scale, case.image_size)
    ours = outputs(model.encode_image, model.encode_text, model.logit_scale, case.image_size)
    assert_same_outputs(ours, expected, f"{TIMM_REPO} from the cache")


# -----------------------------------------------------------------------------
# convert: transformers -> openai -> transformers, every tensor bit for bit


# OpenAI's layout describes only OpenAI's conventions (64-wide heads, quick_gelu, eps 1e-5): a tiny model with them
TINY_64 = dict(
    vision_config=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8),
    text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1),
    projection_dim=16,
)


@pytest.fixture(scope="module")
def tiny64_dir(tmp_path_factory):
    return write_checkpoint(reference_model(TINY_64, seed=3), tmp_path_factory.mktemp("tiny64"),
                            weights=("model.safetensors",), tokenizer_files=False)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_convert_round_trip_is_bit_exact(tiny64_dir, tmp_path, suffix):
    original = load_file(tiny64_dir / "model.safetensors")
    convert(tiny64_dir, tmp_path / f"openai{suffix}", "openai")
    files = convert(tmp_path / f"openai{suffix}", tmp_path / "back", "transformers")
    assert {"config.json", "model.safetensors"} <= {f.name for f in files}
    back = load_file(tmp_path / "back" / "model.safetensors")
    assert back.keys() == original.keys()
    different = [k for k in original if not torch.equal(back[k], original[k])]
    assert not different, f"changed by the round trip: {different[:5]}"
    assert max_diff(CLIP.from_pretrained(tmp_path / "back").text.proj.weight, original["text_projection.weight"]) == 0


def test_converted_folder_loads_in_transformers(tiny_dir, tiny_ref, tmp_path):
    from transformers import CLIPModel

    convert(tiny_dir, tmp_path / "out", "transformers")
    theirs = CLIPModel.from_pretrained(tmp_path / "out").eval()
    px, ids = probe_inputs(32)
    with torch.no_grad():
        assert torch.equal(theirs.get_image_features(pixel_values=px).pooler_output,
                           tiny_ref.get_image_features(pixel_values=px).pooler_output)


def test_openai_layout_refuses_what_it_cannot_describe(tiny_dir, tmp_path):
    # The tiny model's heads are 12 and 8 wide: OpenAI's readers would split its towers into 64-wide heads
    with pytest.raises(CheckpointError, match=r"openai layout cannot describe.*heads 8 wide.*--to transformers"):
        convert(tiny_dir, tmp_path / "tiny.pt", "openai")
    assert not (tmp_path / "tiny.pt").exists()


def test_openai_file_with_heads_that_cannot_be_inferred(tiny, tmp_path):
    # Written by another tool: OpenAI's names for a 48-wide vision tower, which 64-wide heads cannot divide
    sd = openai.plan(tiny.config).from_miniclip(tiny.state_dict())
    torch.save({k: v.contiguous().clone() for k, v in sd.items()}, tmp_path / "tiny.pt")
    with pytest.raises(CheckpointError, match=r"vision tower is 48 wide.*head count is unknown.*config="):
        CLIP.from_pretrained(tmp_path / "tiny.pt")


def test_unknown_layout_name_for_save(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="transformers.*openai"):
        convert(tiny_dir, tmp_path / "x", "keras")


# -----------------------------------------------------------------------------
# What is not a checkpoint in a known layout: the error names every layout and why this is none of them

LAYOUT_NAMES = ("transformers:", "openai:", "open_clip:")


def assert_names_the_layouts(message):
    for words in LAYOUT_NAMES:
        assert words in message, message


def test_unknown_layout(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"module.encoder.weight": torch.zeros(2), "module.head.bias": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError) as e:
        CLIP.from_pretrained(path)
    assert "no layout miniclip knows" in str(e.value) and "module" in str(e.value)
    assert_names_the_layouts(str(e.value))


def test_mixed_layouts(tiny_dir, tmp_path):
    sd = load_file(tiny_dir / "model.safetensors")
    sd["visual.conv1.weight"] = torch.zeros(48, 3, 8, 8)  # one OpenAI-layout tensor among transformers' ones
    path = tmp_path / "mixed.safetensors"
    save_file(sd, path)
    with pytest.raises(CheckpointError) as e:
        CLIP.from_pretrained(path)
    message = str(e.value)
    assert "mixes the tensor names of several layouts" in message and "visual.conv1.weight" in message
    assert_names_the_layouts(message)


@pytest.mark.parametrize("content, words", [
    (bytes(range(256)) * 8, "neither a safetensors file nor"),
    ([torch.zeros(1)], "does not hold a state dict"),
], ids=["random-bytes", "pickled-list"])
def test_files_that_are_no_checkpoint(tmp_path, content, words):
    path = tmp_path / "weights.pt"
    path.write_bytes(content) if isinstance(content, bytes) else torch.save(content, path)
    with pytest.raises(CheckpointError) as e:
        CLIP.from_pretrained(path)
    assert words in str(e.value) and "weights.pt" in str(e.value)
    assert_names_the_layouts(str(e.value))
