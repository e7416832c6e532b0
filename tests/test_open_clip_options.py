"""Every open_clip option miniclip implements loads and matches; every one it does not is refused by name.

The reference is tests/open_clip_reference.py, an independent implementation of open_clip's CLIP written from
the options' definitions (open_clip itself cannot be installed here), checked in tests/test_open_clip_reference.py
against OpenAI's model and transformers where they have the option. Each case builds it with random, perturbed
weights (non-zero biases, LayerNorm gains and layer scales away from 1), saves it as open_clip's Hub repositories
hold it, loads it with miniclip and compares both embeddings to 1e-5 (fp32). The families (CLIPA, MetaCLIP 2
worldwide, ViT-M-16-alt) start from open_clip's shipped config files, with every option kept and only the sizes
shrunk.
"""

import json
from pathlib import Path

import pytest
import torch
from compare import assert_close
from open_clip_reference import build, write_open_clip

from miniclip import CLIP
from miniclip.errors import CheckpointError, InputError
from miniclip.weights import convert, open_clip

CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "open_clip_model_configs"
ATOL = RTOL = 1e-5

VISION = dict(image_size=32, patch_size=8, width=64, layers=2, head_width=16)
TEXT = dict(context_length=16, vocab_size=1000, width=32, heads=4, layers=2)


def cfg(vision=None, text=None, **model):
    return {"embed_dim": 32, "vision_cfg": {**VISION, **(vision or {})}, "text_cfg": {**TEXT, **(text or {})}, **model}


OPTIONS = {
    "plain (exact gelu)": cfg(),
    "quick_gelu": cfg(quick_gelu=True),
    "norm_kwargs eps 1e-6, both towers": cfg({"norm_kwargs": {"eps": 1e-6}}, {"norm_kwargs": {"eps": 1e-6}}),
    "norm_kwargs eps 0.1 (large: a missed eps shows)": cfg({"norm_kwargs": {"eps": 0.1}}, {"norm_kwargs": {"eps": 0.1}}),
    "act_kwargs tanh": cfg({"act_kwargs": {"approximate": "tanh"}}, {"act_kwargs": {"approximate": "tanh"}}),
    "head_width 8, 2 text heads": cfg({"head_width": 8}, {"heads": 2}),
    "mlp_ratio 2.5": cfg({"mlp_ratio": 2.5}, {"mlp_ratio": 2.5}),
    "ls_init_value": cfg({"ls_init_value": 1e-4}, {"ls_init_value": 1e-4}),
    "no_ln_pre": cfg({"no_ln_pre": True}),
    "pool_type avg": cfg({"pool_type": "avg"}),
    "pool_type avg + final_ln_after_pool": cfg({"pool_type": "avg", "final_ln_after_pool": True}),
    "final_ln_after_pool with tok": cfg({"final_ln_after_pool": True}),
    "attentional_pool (width != embed_dim)": cfg({"attentional_pool": True, "attn_pooler_queries": 5,
                                                  "attn_pooler_heads": 4, "norm_kwargs": {"eps": 1e-3}}),
    "attentional_pool (width == embed_dim), avg": cfg({"attentional_pool": True, "attn_pooler_queries": 4,
                                                       "attn_pooler_heads": 2, "width": 32, "pool_type": "avg"}),
    "qk_norm": cfg({"qk_norm": True, "norm_kwargs": {"eps": 1e-3}}, {"qk_norm": True}),
    "proj_bias": cfg(text={"proj_bias": True}),
    "no_causal_mask + pool last": cfg(text={"no_causal_mask": True, "pool_type": "last"}),
    "pool_type first": cfg(text={"pool_type": "first"}),
    "pool_type eos (eos_id 2)": cfg(text={"pool_type": "eos", "eos_id": 2}),
    "no_causal_mask + argmax": cfg(text={"no_causal_mask": True}),
    "non-square image_size": cfg({"image_size": [32, 48], "patch_size": 8}),
    "non-square patch_size": cfg({"image_size": [32, 48], "patch_size": [8, 16]}),
}


def shrunk(name: str) -> dict:
    """A shipped config with its options kept and its sizes made tiny."""
    model = json.loads((CONFIGS / f"{name}.json").read_text())
    v, t = model["vision_cfg"], model["text_cfg"]
    v.update(width=64, layers=2, head_width=16, image_size=28 if v["patch_size"] == 14 else 32)
    v.pop("mlp_ratio", None)  # bigG's 4.9231 times 64 would not be an integer width in open_clip either
    t.update(width=32, heads=4, layers=2, context_length=min(t["context_length"], 16), vocab_size=1000)
    model["embed_dim"] = 32
    return model


FAMILIES = ["ViT-L-14-CLIPA", "ViT-L-14-CLIPA-336", "ViT-H-14-CLIPA", "ViT-H-14-CLIPA-336", "ViT-bigG-14-CLIPA",
            "ViT-bigG-14-CLIPA-336", "ViT-H-14-worldwide", "ViT-H-14-worldwide-quickgelu",
            "ViT-H-14-worldwide-378", "ViT-L-14-worldwide", "ViT-bigG-14-worldwide", "ViT-M-16-alt", "ViT-S-32-alt"]


def probe(ref, model_cfg, seed=1):
    """Images at the model's size, and full-length ids with the pooled token at varied positions."""
    v, t = ref.vision, ref.text
    h, w = v["image_size"] if isinstance(v["image_size"], (list, tuple)) else (v["image_size"],) * 2
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(3, 3, h, w, generator=g)
    n, vocab = t["context_length"], t["vocab_size"]
    ids = torch.randint(3, vocab - 1, (4, n), generator=g)
    eot = t["eos_id"] if t["pool_type"] == "eos" else vocab - 1
    for row, end in enumerate([3, n - 1, 7, 1]):
        ids[row, end] = eot
        ids[row, end + 1:] = 0  # padding after the end of text, as the tokenizers pad
    return pixels, ids


def embeddings(model_or_ref, pixels, ids):
    with torch.no_grad():
        return model_or_ref.encode_image(pixels), model_or_ref.encode_text(ids)


def check_matches(model_cfg, tmp_path, what, safetensors=True):
    ref = build(model_cfg, seed=0)
    folder = write_open_clip(tmp_path / "open_clip", model_cfg, ref.state_dict(), safetensors=safetensors)
    ours = CLIP.from_pretrained(folder)
    pixels, ids = probe(ref, model_cfg)
    (oi, ot), (ri, rt) = embeddings(ours, pixels, ids), embeddings(ref, pixels, ids)
    assert_close(oi, ri, ATOL, RTOL, f"{what}: image embeddings vs the open_clip reference")
    assert_close(ot, rt, ATOL, RTOL, f"{what}: text embeddings vs the open_clip reference")
    return ours, pixels, ids


@pytest.mark.parametrize("option", list(OPTIONS))
def test_option_loads_and_matches_open_clip(option, tmp_path):
    check_matches(OPTIONS[option], tmp_path, option)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_loads_and_matches_open_clip(family, tmp_path):
    check_matches(shrunk(family), tmp_path, family, safetensors=family.endswith("alt"))


def test_options_change_the_numbers():
    # Each option case must differ from the plain model, or the comparison above could not catch it dropped.
    plain = build(OPTIONS["plain (exact gelu)"], seed=0)
    pixels, ids = probe(plain, OPTIONS["plain (exact gelu)"])
    base = embeddings(plain, pixels, ids)
    for option, model_cfg in OPTIONS.items():
        if option.startswith(("plain", "non-square", "head_width", "mlp_ratio", "attentional_pool (width ==")):
            continue  # other shapes: they cannot be compared with the plain model's tensors
        ref = build(model_cfg, seed=0)
        other = embeddings(ref, pixels, ids)
        if option == "final_ln_after_pool with tok":  # known answer: LayerNorm acts per token, so the order of
            assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(other, base))  # ln and x[:, 0] is moot
            continue
        assert any((a - b).abs().max() > 1e-4 for a, b in zip(other, base)), option


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("layout", ["transformers", "openai"])
def test_convert_through_every_layout_reproduces_or_refuses(option, layout, tmp_path):
    model_cfg = OPTIONS[option]
    ours, pixels, ids = check_matches(model_cfg, tmp_path, option)
    dst = tmp_path / ("hf" if layout == "transformers" else "model.safetensors")
    try:
        convert(tmp_path / "open_clip", dst, layout)
    except CheckpointError as e:
        assert f"the {layout} layout cannot describe this model" in str(e)
        assert not dst.exists()
        return
    back = CLIP.from_pretrained(dst)
    for a, b, what in zip(embeddings(back, pixels, ids), embeddings(ours, pixels, ids), ("image", "text")):
        assert_close(a, b, 1e-6, 1e-6, f"{option} through the {layout} layout: {what}")


def test_which_options_each_layout_describes(tmp_path):
    # Known answers: OpenAI's layout describes only quick_gelu, 64-wide heads, eps 1e-5 and none of the options;
    # transformers' describes any activation it names, head count and eps, and none of the options either.
    def refused(model_cfg, layout):
        folder = write_open_clip(tmp_path / "src", model_cfg, build(model_cfg).state_dict())
        try:
            convert(folder, tmp_path / ("hf" if layout == "transformers" else "m.pt"), layout)
            return False
        except CheckpointError:
            return True

    openai_plain = cfg({"head_width": 64}, {"width": 64, "heads": 1, "vocab_size": 49408}, quick_gelu=True)
    assert not refused(openai_plain, "openai")
    assert refused(OPTIONS["plain (exact gelu)"], "openai")  # exact gelu, 16-wide heads
    for option in ("plain (exact gelu)", "norm_kwargs eps 1e-6, both towers", "act_kwargs tanh", "quick_gelu"):
        assert not refused(OPTIONS[option], "transformers"), option
    for option in ("ls_init_value", "no_ln_pre", "pool_type avg", "qk_norm", "proj_bias", "no_causal_mask + pool last",
                   "pool_type first", "attentional_pool (width != embed_dim)", "non-square image_size"):
        assert refused(OPTIONS[option], "transformers"), option


def test_a_model_trained_on_another_tokenizer_refuses_miniclips(tmp_path):
    model_cfg = shrunk("ViT-L-14-CLIPA")
    folder = write_open_clip(tmp_path / "clipa", model_cfg, build(model_cfg).state_dict())
    model = CLIP.from_pretrained(folder)
    assert "bert-base-uncased" in model.config.text.tokenizer
    with pytest.raises(InputError, match="bert-base-uncased.*tokenize its texts with that tokenizer"):
        model.tokenize(["a photo of a cat"])
    from miniclip.zero_shot import zero_shot_classifier

    with pytest.raises(InputError, match="another tokenizer"):
        zero_shot_classifier(model, ["cat", "dog"])


# -----------------------------------------------------------------------------
# Refused by name: every option miniclip does not implement, and every field it does not know

REFUSED = [
    # (where, key, value): the message must name where.key
    ("model_cfg", "custom_text", True),
    ("model_cfg", "init_logit_bias", -10.0),
    ("model_cfg", "nonscalar_logit_scale", True),
    ("model_cfg", "multimodal_cfg", {"width": 512}),
    ("model_cfg", "some_future_option", 1),
    ("vision_cfg", "timm_model_name", "convnext_base"),
    ("vision_cfg", "attentional_pool", "parallel"),
    ("vision_cfg", "pool_type", "none"),
    ("vision_cfg", "scaled_cosine_attn", True),
    ("vision_cfg", "scale_heads", True),
    ("vision_cfg", "scale_attn_inner", True),
    ("vision_cfg", "scale_attn", True),
    ("vision_cfg", "scale_fc", True),
    ("vision_cfg", "act_kwargs", {"approximate": "sigmoid"}),
    ("vision_cfg", "norm_kwargs", {"eps": 1e-6, "elementwise_affine": False}),
    ("vision_cfg", "some_future_option", True),
    ("text_cfg", "hf_model_name", "roberta-base"),
    ("text_cfg", "embed_cls", True),
    ("text_cfg", "proj_type", "none"),
    ("text_cfg", "final_ln_after_pool", True),
    ("text_cfg", "text_arch", "modern"),
    ("text_cfg", "variable_text", True),
    ("text_cfg", "pool_type", "none"),
    ("text_cfg", "scaled_cosine_attn", True),
    ("text_cfg", "scale_fc", True),
    ("text_cfg", "some_future_option", "x"),
]


def not_default(value):
    """A value other than open_clip's default (the one miniclip implements), of a plausible kind."""
    return {None: "something", False: True}.get(value, value + "_other" if isinstance(value, str) else 1)


# ... and every field the readers' MUST_BE tables hold, with a value they do not implement
REFUSED += [(where, key, not_default(value)) for where, table in (("model_cfg", open_clip.MODEL_MUST_BE),
            ("vision_cfg", open_clip.VISION_MUST_BE), ("text_cfg", open_clip.TEXT_MUST_BE))
            for key, value in table.items() if (where, key) not in {(w, k) for w, k, _ in REFUSED}]


@pytest.mark.parametrize("where, key, value", REFUSED, ids=[f"{w}.{k}" for w, k, _ in REFUSED])
def test_unimplemented_option_is_refused_by_name(where, key, value, tmp_path):
    model_cfg = cfg()
    target = model_cfg if where == "model_cfg" else model_cfg[where]
    target[key] = value
    folder = write_open_clip(tmp_path / "m", model_cfg, build(cfg()).state_dict())
    with pytest.raises(CheckpointError, match=rf"{where}\.{key}"):
        CLIP.from_pretrained(folder)


def test_eos_pooling_without_eos_id_is_refused(tmp_path):
    folder = write_open_clip(tmp_path / "m", cfg(text={"pool_type": "eos"}), build(cfg()).state_dict())
    with pytest.raises(CheckpointError, match="eos_id"):
        CLIP.from_pretrained(folder)


def test_every_shipped_config_is_read_or_refused_by_name():
    # The 144 configs open_clip ships: each either becomes a miniclip config or is refused naming a field.
    loaded = 0
    from miniclip.weights.open_clip import config_from_open_clip

    for path in sorted(CONFIGS.glob("*.json")):
        try:
            config_from_open_clip(json.loads(path.read_text()))
            loaded += 1
        except CheckpointError as e:
            assert "_cfg." in str(e), f"{path.name}: {e}"
    assert loaded >= 55, loaded  # ViT and RN CLIPs, CLIPA, worldwide, -alt, quickgelu variants


def test_preprocess_cfg_is_read_or_refused(tmp_path):
    import miniclip
    from PIL import Image

    model_cfg = cfg()
    folder = write_open_clip(tmp_path / "m", model_cfg, build(model_cfg).state_dict())
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["preprocess_cfg"] = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1.0], "interpolation": "bilinear"}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    _, preprocess = miniclip.load(folder)
    pixels = preprocess(Image.new("RGB", (40, 50), (255, 0, 128)))  # known answer: (value / 255 - mean) / std
    expected = torch.tensor([(1 - 0.5) / 0.25, (0 - 0.5) / 0.5, (128 / 255 - 0.5) / 1.0])
    assert pixels.shape == (3, 32, 32)
    assert_close(pixels[:, 5, 7], expected, 1e-6, 1e-6, "constant image through preprocess_cfg's mean and std")
    config["preprocess_cfg"]["resize_mode"] = "longest"
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="resize_mode"):
        miniclip.load(folder)
