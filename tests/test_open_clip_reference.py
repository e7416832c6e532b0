"""Self-tests of tests/open_clip_reference.py, the stand-in for open_clip (which cannot be installed here).

Where an independent oracle exists, the reference must equal it to 1e-5: OpenAI's own clip/model.py for the
plain options (QuickGELU, tok/argmax pooling, causal text, 64-wide heads), transformers' CLIPModel for exact or
tanh GELU, LayerNorm eps 1e-6, non-64 head widths and fractional mlp_ratio. The options neither has are checked
against OpenAI's model changed by hand the way the option's definition says (ln_pre removed, attention masks
removed, conv1/positional embedding replaced, pooling done by hand on its tokens), against torch's
nn.MultiheadAttention (the attentional pooler), or by known answers (LayerScale 1 = no LayerScale, LayerScale 0 =
identity blocks, qk-norm invariances, proj_bias = projection + bias).
"""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from compare import assert_close
from open_clip_reference import build, RefCLIP, state_dict_shapes, write_open_clip
from oracles import openai_model_module

TOL = dict(atol=1e-5, rtol=1e-5)
CONTEXT, VOCAB, EOT = 16, 500, 499  # EOT is the largest id, as in CLIP's vocabulary (argmax pooling finds it)


def tiny_cfg(vision=None, text=None, **top):
    """A tiny open_clip model_cfg with OpenAI's plain options (64-wide heads), updated by the overrides."""
    cfg = {"embed_dim": 24, "quick_gelu": True,
           "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 128, "layers": 2},
           "text_cfg": {"context_length": CONTEXT, "vocab_size": VOCAB, "width": 64, "heads": 1, "layers": 2}}
    cfg["vision_cfg"].update(vision or {})
    cfg["text_cfg"].update(text or {})
    cfg.update(top)
    return cfg


def pixels(h=32, w=32, seed=1):
    return torch.randn(3, 3, h, w, generator=torch.Generator().manual_seed(seed))


def text_ids():
    """Three rows of length CONTEXT: EOT at different places (one at the very end), zeros after it."""
    g = torch.Generator().manual_seed(2)
    ids = torch.zeros(3, CONTEXT, dtype=torch.long)
    for row, eot in enumerate([4, CONTEXT - 1, 9]):
        ids[row, :eot] = torch.randint(1, EOT, (eot,), generator=g)
        ids[row, eot] = EOT
    return ids


def openai_oracle(ref: RefCLIP, tensors: dict | None = None, prepare=None):
    """OpenAI's clip/model.py CLIP at the reference's sizes, holding `tensors` (default: the reference's own).

    `prepare(model)` may swap modules first (as an option's definition says); the load is strict either way."""
    v, t = ref.vision, ref.text
    model = openai_model_module().CLIP(ref.embed_dim, v["image_size"], v["layers"], v["width"], v["patch_size"],
                                       t["context_length"], t["vocab_size"], t["width"], t["heads"], t["layers"])
    if prepare is not None:
        prepare(model)
    model.load_state_dict(tensors if tensors is not None else ref.state_dict(), strict=True)
    return model.eval()


def captured(module, run, seq_first: bool):
    """The output of `module` while `run()` is called, batch-first (OpenAI's transformers are sequence-first)."""
    seen = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append(out))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen[-1].permute(1, 0, 2) if seq_first else seen[-1]


# -----------------------------------------------------------------------------------------------------------------
# Oracles: OpenAI's model and transformers' CLIPModel


def test_plain_options_equal_openais_model():
    ref = build(tiny_cfg(), seed=0)
    oracle = openai_oracle(ref)  # strict load: every name and shape is OpenAI's (= open_clip's) layout
    with torch.no_grad():
        assert_close(ref.encode_image(pixels()), oracle.encode_image(pixels()), **TOL, what="image vs OpenAI")
        assert_close(ref.encode_text(text_ids()), oracle.encode_text(text_ids()), **TOL, what="text vs OpenAI")


def openai_to_transformers(sd: dict, vision_layers: int, text_layers: int) -> dict:
    """OpenAI/open_clip names -> transformers' CLIPModel names (fused in_proj split into q, k, v)."""
    out = {
        "logit_scale": sd["logit_scale"],
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "visual_projection.weight": sd["visual.proj"].t(),
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_projection.weight": sd["text_projection"].t(),
    }
    for p in ("weight", "bias"):
        out[f"vision_model.pre_layrnorm.{p}"] = sd[f"visual.ln_pre.{p}"]
        out[f"vision_model.post_layernorm.{p}"] = sd[f"visual.ln_post.{p}"]
        out[f"text_model.final_layer_norm.{p}"] = sd[f"ln_final.{p}"]
    towers = [("vision_model", "visual.transformer", vision_layers), ("text_model", "transformer", text_layers)]
    for hf, oc, n in towers:
        for i in range(n):
            h, o = f"{hf}.encoder.layers.{i}.", f"{oc}.resblocks.{i}."
            for p in ("weight", "bias"):
                for x, chunk in zip("qkv", sd[f"{o}attn.in_proj_{p}"].chunk(3)):
                    out[f"{h}self_attn.{x}_proj.{p}"] = chunk
                out[f"{h}self_attn.out_proj.{p}"] = sd[f"{o}attn.out_proj.{p}"]
                out[f"{h}layer_norm1.{p}"] = sd[f"{o}ln_1.{p}"]
                out[f"{h}layer_norm2.{p}"] = sd[f"{o}ln_2.{p}"]
                out[f"{h}mlp.fc1.{p}"] = sd[f"{o}mlp.c_fc.{p}"]
                out[f"{h}mlp.fc2.{p}"] = sd[f"{o}mlp.c_proj.{p}"]
    return {k: v.contiguous() for k, v in out.items()}


@pytest.mark.parametrize("hidden_act, act_kwargs, eps", [
    ("gelu", None, 1e-6),  # ViT-*-worldwide, SigLIP-like text towers
    ("gelu_pytorch_tanh", {"approximate": "tanh"}, 0.1),  # an eps large enough that a LayerNorm without it shows
])
def test_gelu_eps_and_head_width_equal_transformers(hidden_act, act_kwargs, eps):
    from transformers import CLIPConfig, CLIPModel

    norm = {"norm_kwargs": {"eps": eps}, "act_kwargs": act_kwargs}
    cfg = tiny_cfg(vision={"width": 48, "head_width": 8, "mlp_ratio": 2.5, **norm},  # 6 heads, mlp width 120
                   text={"width": 48, "heads": 6, **norm}, quick_gelu=False)
    ref = build(cfg, seed=1)
    common = dict(layer_norm_eps=eps, hidden_act=hidden_act, num_hidden_layers=2, num_attention_heads=6,
                  hidden_size=48)
    config = CLIPConfig(
        vision_config=dict(common, intermediate_size=120, image_size=32, patch_size=8),
        text_config=dict(common, intermediate_size=192, vocab_size=VOCAB, max_position_embeddings=CONTEXT,
                         bos_token_id=0, eos_token_id=2, pad_token_id=1),  # eos 2: transformers' argmax pooling
        projection_dim=24)
    hf = CLIPModel(config).eval()
    missing, unexpected = hf.load_state_dict(openai_to_transformers(ref.state_dict(), 2, 2), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    with torch.no_grad():
        theirs_img = hf.get_image_features(pixel_values=pixels()).pooler_output
        theirs_txt = hf.get_text_features(input_ids=text_ids()).pooler_output
    assert_close(ref.encode_image(pixels()), theirs_img, **TOL, what=f"image vs transformers ({hidden_act})")
    assert_close(ref.encode_text(text_ids()), theirs_txt, **TOL, what=f"text vs transformers ({hidden_act})")


# -----------------------------------------------------------------------------------------------------------------
# Options neither oracle has


def test_layer_scale_multiplies_each_residual_branch():
    plain_cfg = tiny_cfg()
    ls = build(tiny_cfg(vision={"ls_init_value": 1e-4}, text={"ls_init_value": 1e-4}), seed=3)
    assert sum(k.endswith(("ls_1.gamma", "ls_2.gamma")) for k in ls.state_dict()) == 8
    sd = ls.state_dict()

    def with_gamma(value):
        return RefCLIP(ls.cfg, {k: torch.full_like(v, value) if k.endswith("gamma") else v for k, v in sd.items()})

    # gamma = 1: the plain model (whose equality with OpenAI's is tested above)
    one, base = with_gamma(1.0), RefCLIP(plain_cfg, {k: v for k, v in sd.items() if not k.endswith("gamma")})
    assert_close(one.encode_image(pixels()), base.encode_image(pixels()), **TOL, what="gamma=1 image")
    assert_close(one.encode_text(text_ids()), base.encode_text(text_ids()), **TOL, what="gamma=1 text")
    # the random gammas matter
    assert (ls.encode_image(pixels()) - one.encode_image(pixels())).abs().max() > 1e-2
    assert (ls.encode_text(text_ids()) - one.encode_text(text_ids())).abs().max() > 1e-2

    # gamma = 0: every block is the identity; the answer by hand with torch's own conv2d and layer_norm
    zero, p = with_gamma(0.0), sd
    x = F.conv2d(pixels(), p["visual.conv1.weight"], stride=8).flatten(2).transpose(1, 2)
    x = torch.cat([p["visual.class_embedding"].expand(3, 1, -1), x], 1) + p["visual.positional_embedding"]
    x = F.layer_norm(x, (128,), p["visual.ln_pre.weight"], p["visual.ln_pre.bias"])
    expected = F.layer_norm(x[:, 0], (128,), p["visual.ln_post.weight"], p["visual.ln_post.bias"]) @ p["visual.proj"]
    assert_close(zero.encode_image(pixels()), expected, **TOL, what="gamma=0 image")
    ids = text_ids()
    t = F.layer_norm(p["token_embedding.weight"][ids] + p["positional_embedding"], (64,),
                     p["ln_final.weight"], p["ln_final.bias"])
    expected = t[torch.arange(3), torch.tensor([4, CONTEXT - 1, 9])] @ p["text_projection"]
    assert_close(zero.encode_text(ids), expected, **TOL, what="gamma=0 text")


@pytest.mark.parametrize("pool_type, final_ln_after_pool, no_ln_pre",
                         [("avg", False, False), ("avg", True, True), ("tok", True, False), ("tok", False, True)])
def test_vision_pooling_options_against_openais_tokens(pool_type, final_ln_after_pool, no_ln_pre):
    plain = build(tiny_cfg(), seed=4)
    ref = build(tiny_cfg(vision={"pool_type": pool_type, "final_ln_after_pool": final_ln_after_pool,
                                 "no_ln_pre": no_ln_pre}), seed=4)
    assert ("visual.ln_pre.weight" in ref.state_dict()) == (not no_ln_pre)
    oracle = openai_oracle(plain, ref.state_dict(),
                           prepare=lambda m: setattr(m.visual, "ln_pre", torch.nn.Identity()) if no_ln_pre else None)
    tokens = captured(oracle.visual.transformer, lambda: oracle.encode_image(pixels()), seq_first=True)
    p = ref.state_dict()

    def ln_post(x):
        return F.layer_norm(x, (128,), p["visual.ln_post.weight"], p["visual.ln_post.bias"])

    def pool(x):
        return x[:, 1:].mean(1) if pool_type == "avg" else x[:, 0]

    pooled = ln_post(pool(tokens)) if final_ln_after_pool else pool(ln_post(tokens))
    assert_close(ref.encode_image(pixels()), pooled @ p["visual.proj"], **TOL, what="pooled image features")


@pytest.mark.parametrize("width, head_width, pool_type", [(128, 64, "tok"), (24, 8, "avg")])
def test_attentional_pool_against_torch_multihead_attention(width, head_width, pool_type):
    """open_clip's AttentionalPooler is (was, before its own Attention class) an nn.MultiheadAttention with
    kdim = vdim = width: the tensors must load into one by name, and give its answer."""
    eps = 0.5  # the tower's norm_kwargs: ln_post takes it, the pooler's ln_q / ln_k do not (built without it)
    cfg = tiny_cfg(vision={"width": width, "head_width": head_width, "attentional_pool": True, "pool_type": pool_type,
                           "attn_pooler_queries": 5, "attn_pooler_heads": 4, "norm_kwargs": {"eps": eps}})
    ref = build(cfg, seed=5)
    p = ref.state_dict()
    assert p["visual.proj"].shape == (24, 24) and p["visual.attn_pool.query"].shape == (5, 24)
    assert ("visual.attn_pool.attn.in_proj_weight" in p) == (width == 24)
    mha = torch.nn.MultiheadAttention(24, 4, kdim=width, vdim=width, batch_first=True)
    prefix = "visual.attn_pool.attn."
    mha.load_state_dict({k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}, strict=True)

    tokens = ref.image_tokens(pixels())  # the tower itself is tested against the oracles above
    k = F.layer_norm(tokens, (width,), p["visual.attn_pool.ln_k.weight"], p["visual.attn_pool.ln_k.bias"])
    q = F.layer_norm(p["visual.attn_pool.query"], (24,), p["visual.attn_pool.ln_q.weight"],
                     p["visual.attn_pool.ln_q.bias"]).expand(3, -1, -1)
    with torch.no_grad():
        out = mha(q, k, k, need_weights=False)[0]  # (B, 5, 24)
    out = F.layer_norm(out, (24,), p["visual.ln_post.weight"], p["visual.ln_post.bias"], eps=eps)
    pooled = out[:, 1:].mean(1) if pool_type == "avg" else out[:, 0]
    assert_close(ref.encode_image(pixels()), pooled @ p["visual.proj"], **TOL, what="attentional pool")


@pytest.mark.parametrize("tower", ["visual.transformer", "transformer"])
def test_qk_norm_is_a_layer_norm_of_each_heads_q_and_k(tower):
    """LayerNorm over head_dim is blind to scaling one head's q (or k) by a positive number and to shifting it by a
    constant: change the in-projection that way in every block and the output must not move; without qk-norm it
    must. (L2 normalisation would see the shift; a LayerNorm over the whole width would see a per-head change.)"""
    side = "vision" if tower.startswith("visual") else "text"
    heads = 2 if side == "vision" else 4
    extra = {"qk_norm": True} if side == "vision" else {"qk_norm": True, "width": 64, "heads": 4}
    cfg = tiny_cfg(**{side: extra})
    run = (lambda m: m.encode_image(pixels())) if side == "vision" else (lambda m: m.encode_text(text_ids()))
    ref = build(cfg, seed=6)
    assert f"{tower}.resblocks.1.attn.ln_q.weight" in ref.state_dict()
    width = ref.vision["width"] if side == "vision" else 64
    hd = width // heads

    def edited(model):
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        for i in range(2):
            w, b = sd[f"{tower}.resblocks.{i}.attn.in_proj_weight"], sd[f"{tower}.resblocks.{i}.attn.in_proj_bias"]
            q0, k1 = slice(0, hd), slice(width + hd, width + 2 * hd)  # head 0's q rows, head 1's k rows
            w[q0] *= 3.0
            b[q0] = b[q0] * 3.0 + 0.7
            w[k1] *= 0.25
            b[k1] = b[k1] * 0.25 - 0.4
        return RefCLIP(model.cfg, sd)

    assert_close(run(edited(ref)), run(ref), atol=1e-4, rtol=1e-4, what="qk-norm invariance")
    plain = build(tiny_cfg(**{side: {k: v for k, v in extra.items() if k != "qk_norm"}}), seed=6)
    assert (run(edited(plain)) - run(plain)).abs().max() > 1e-2
    # and the qk-norm LayerNorm weights are used
    sd = ref.state_dict()
    sd[f"{tower}.resblocks.0.attn.ln_q.weight"] = 2 * sd[f"{tower}.resblocks.0.attn.ln_q.weight"]
    assert (run(RefCLIP(cfg, sd)) - run(ref)).abs().max() > 1e-2


EOS = 7


def eos_ids():
    """Rows with eos (id 7) twice, once at position 0, and not at all; the last row has EOT for OpenAI."""
    ids = text_ids()
    ids[0, 2], ids[0, 6] = EOS, EOS
    ids[1, 0] = EOS
    ids[2][ids[2] == EOS] = 8
    return ids


@pytest.mark.parametrize("pool_type, no_causal_mask, positions", [
    ("eos", False, [2, 0, 0]),  # first eos; position 0 when there is none
    ("last", True, [CONTEXT - 1] * 3),
    ("first", False, [0, 0, 0]),
    ("argmax", True, [4, CONTEXT - 1, 9]),
])
def test_text_pooling_and_causal_mask_against_openais_tokens(pool_type, no_causal_mask, positions):
    plain = build(tiny_cfg(), seed=7)
    text = {"pool_type": pool_type, "no_causal_mask": no_causal_mask, "eos_id": EOS}
    ref = build(tiny_cfg(text=text), seed=7)
    oracle = openai_oracle(plain, ref.state_dict())
    if no_causal_mask:  # OpenAI's blocks keep the mask as a plain attribute: without it, attention is bidirectional
        for block in oracle.transformer.resblocks:
            block.attn_mask = None
    ids = eos_ids()
    tokens = captured(oracle.ln_final, lambda: oracle.encode_text(ids), seq_first=False)  # after ln_final
    expected = tokens[torch.arange(3), torch.tensor(positions)] @ ref.state_dict()["text_projection"]
    assert_close(ref.encode_text(ids), expected, **TOL, what=f"text pool {pool_type}")

    # an early position sees a later token only without the causal mask
    changed = ids.clone()
    changed[:, 10] = 123
    early = (ref.text_tokens(changed)[:, 3] - ref.text_tokens(ids)[:, 3]).abs().max()
    assert (early > 1e-3) if no_causal_mask else (early == 0)


def test_proj_bias_makes_the_text_projection_a_linear_layer():
    ref = build(tiny_cfg(text={"proj_bias": True}), seed=8)
    sd = ref.state_dict()
    assert sd["text_projection.weight"].shape == (24, 64) and sd["text_projection.bias"].shape == (24,)
    plain = build(tiny_cfg(), seed=8)
    as_matrix = {k: v for k, v in sd.items() if not k.startswith("text_projection")}
    as_matrix["text_projection"] = sd["text_projection.weight"].t()
    expected = RefCLIP(plain.cfg, as_matrix).encode_text(text_ids()) + sd["text_projection.bias"]
    assert_close(ref.encode_text(text_ids()), expected, **TOL, what="proj_bias")


def test_non_square_image_and_patch_against_openais_model_with_its_conv_replaced():
    """image_size [32, 48], patch_size [8, 16]: a 4 x 3 grid, 13 position rows. OpenAI's forward pass takes any
    conv1 and positional embedding, so with those two swapped in it is the oracle."""
    cfg = tiny_cfg(vision={"image_size": [32, 48], "patch_size": [8, 16]})
    ref = build(cfg, seed=9)
    p = ref.state_dict()
    assert p["visual.conv1.weight"].shape == (128, 3, 8, 16) and p["visual.positional_embedding"].shape == (13, 128)

    def swap_patch_layers(model):
        model.visual.conv1 = torch.nn.Conv2d(3, 128, kernel_size=(8, 16), stride=(8, 16), bias=False)
        model.visual.positional_embedding = torch.nn.Parameter(torch.empty(13, 128))

    oracle = openai_oracle(build(tiny_cfg()), p, prepare=swap_patch_layers)
    px = pixels(32, 48)
    with torch.no_grad():
        assert_close(ref.encode_image(px), oracle.encode_image(px), **TOL, what="non-square image")


def test_write_open_clip_round_trips(tmp_path):
    from safetensors.torch import load_file

    cfg = tiny_cfg(vision={"ls_init_value": 1e-4})
    sd = build(cfg).state_dict()
    for safetensors, name in [(True, "open_clip_model.safetensors"), (False, "open_clip_pytorch_model.bin")]:
        folder = write_open_clip(tmp_path / name, cfg, sd, safetensors=safetensors)
        config = json.loads((folder / "open_clip_config.json").read_text())
        assert config["model_cfg"] == cfg and config["preprocess_cfg"]["mean"][0] == 0.48145466
        loaded = load_file(folder / name) if safetensors else torch.load(folder / name, weights_only=True)
        assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)
        assert loaded["logit_scale"].shape == () and math.isclose(loaded["logit_scale"].item(), math.log(100),
                                                                   rel_tol=1e-6)


CONFIGS = Path("/work/shared/data/open_clip_model_configs")


@pytest.mark.skipif(not CONFIGS.is_dir(), reason="open_clip's shipped configs are not here")
def test_shipped_configs_name_their_tensors():
    native, shapes = [], {}
    for path in sorted(CONFIGS.glob("*.json")):
        cfg = json.loads(path.read_text())
        v, t = cfg["vision_cfg"], cfg["text_cfg"]
        if v.get("timm_model_name") or t.get("hf_model_name") or isinstance(v.get("layers"), list) \
                or cfg.get("custom_text") or "multimodal_cfg" in cfg:
            with pytest.raises(ValueError):
                state_dict_shapes(cfg)
            continue
        native.append(path.stem)
        shapes[path.stem] = state_dict_shapes(cfg)
    assert len(native) >= 40
    b16 = shapes["ViT-B-16"]
    assert b16["visual.positional_embedding"] == (197, 768) and b16["text_projection"] == (512, 512)
    assert b16["visual.transformer.resblocks.11.mlp.c_fc.weight"] == (3072, 768)
    assert "visual.ln_pre.weight" not in shapes["ViT-L-14-CLIPA"]
    assert shapes["ViT-M-16-alt"]["visual.transformer.resblocks.0.ls_2.gamma"] == (512,)
    assert shapes["ViT-bigG-14"]["visual.transformer.resblocks.0.mlp.c_fc.weight"] == (int(1664 * 4.9231), 1664)
    assert "visual.transformer.resblocks.0.ls_1.gamma" not in b16
