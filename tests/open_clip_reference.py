"""An independent, minimal reference for open_clip's `open_clip.model.CLIP` (the native ViT + text tower).

open_clip cannot be installed where the tests run (it pulls in a multi-GB CUDA torch), but miniclip must load
the checkpoints it saves, for every architecture option its shipped configs use, and match them to 1e-5. This
module is written from those options' definitions (open_clip's `CLIPVisionCfg`/`CLIPTextCfg`, `VisionTransformer`,
`TextTransformer`, `ResidualAttentionBlock`/`CustomResidualAttentionBlock`, `Attention`, `AttentionalPooler`,
`text_global_pool`), not copied from its code: every tensor lives in one flat dict under open_clip's exact
state-dict names, and the forward passes are plain tensor arithmetic (explicit LayerNorm, GELU and softmax
attention), so nothing here shares code with miniclip or with torch.nn modules.

    ref = build(model_cfg, seed=0)            # every tensor deterministic random, biases and LN weights included
    ref.encode_image(pixels)                  # (B, embed_dim), unnormalised
    ref.encode_text(ids)                      # (B, embed_dim), ids of shape (B, context_length)
    write_open_clip(folder, model_cfg, ref.state_dict())   # as open_clip's Hub repositories hold it

Semantics checked against open_clip's source (src/open_clip/{model,transformer,layers}.py):
- heads: vision `width // head_width`, text `heads`; attention-pool `attn_pooler_heads` over `embed_dim`.
- `norm_kwargs` reach every LayerNorm a tower builds with its `norm_layer` (ln_pre, ln_1/ln_2, qk-norm ln_q/ln_k,
  ln_post, ln_final), but NOT the attention pooler's ln_q/ln_k: `VisionTransformer` builds `AttentionalPooler`
  without passing `norm_layer`, so those keep LayerNorm's default eps 1e-5.
- `act_kwargs` are passed to the activation class (nn.GELU(approximate=...)); with quick_gelu they would be
  passed to QuickGELU(), which takes none (open_clip raises), so that combination is rejected here.
- qk-norm: LayerNorm over head_dim on q and k after the split into heads, before the 1/sqrt(head_dim) scaling.
- attentional pool: x -> attn_pool (queries LN'd by ln_q, tokens by ln_k) -> ln_post (embed_dim wide) ->
  pool_type pooling over the query outputs ('avg' = mean of outputs 1:, 'tok' = output 0) -> @ proj
  (embed_dim x embed_dim). `final_ln_after_pool` is ignored on that path (`VisionTransformer._pool`).
  q/k/v projections are separate (q_proj_weight, k_proj_weight, v_proj_weight) when width != embed_dim, one
  in_proj_weight when they are equal (as nn.MultiheadAttention names them); in_proj_bias is always there.
- text `final_ln_after_pool` exists in CLIPTextCfg but `_build_text_tower` never passes it on: ignored.
- `CLIP._encode_text` adds the whole positional_embedding and uses the whole causal mask, so ids must be exactly
  context_length long.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]

# open_clip's dataclass defaults (CLIPVisionCfg / CLIPTextCfg in open_clip/model.py), for the fields that matter.
VISION_DEFAULTS = dict(
    layers=12, width=768, head_width=64, mlp_ratio=4.0, patch_size=16, image_size=224, ls_init_value=None,
    attentional_pool=False, attn_pooler_queries=256, attn_pooler_heads=8, no_ln_pre=False,
    pos_embed_type="learnable", final_ln_after_pool=False, pool_type="tok", act_kwargs=None, norm_kwargs=None,
    qk_norm=False,
)
TEXT_DEFAULTS = dict(
    context_length=77, vocab_size=49408, width=512, heads=8, layers=12, mlp_ratio=4.0, ls_init_value=None,
    embed_cls=False, eos_id=None, no_causal_mask=False, pool_type="argmax", proj_bias=False, proj_type="linear",
    act_kwargs=None, norm_kwargs=None, qk_norm=False,
)
# Options that would change the architecture and that this reference does not implement: refuse them rather
# than silently build something else.
_UNSUPPORTED_IF_SET = ("timm_model_name", "hf_model_name", "scaled_cosine_attn", "scale_heads",
                       "scale_attn_inner", "scale_attn", "scale_fc")


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


def _resolve(model_cfg: dict) -> tuple[dict, dict]:
    """The vision and text configs with open_clip's defaults filled in; unsupported options refused."""
    if model_cfg.get("custom_text") or "multimodal_cfg" in model_cfg:
        raise ValueError("only open_clip.model.CLIP is modelled (no CustomTextCLIP / CoCa key layout)")
    if model_cfg.get("nonscalar_logit_scale"):
        raise ValueError("nonscalar_logit_scale is not modelled")
    v = {**VISION_DEFAULTS, **model_cfg.get("vision_cfg", {})}
    t = {**TEXT_DEFAULTS, **model_cfg.get("text_cfg", {})}
    for name, cfg in (("vision_cfg", v), ("text_cfg", t)):
        bad = [k for k in _UNSUPPORTED_IF_SET if cfg.get(k)]
        if bad:
            raise ValueError(f"{name}: {bad} not modelled")
        if cfg["act_kwargs"] and model_cfg.get("quick_gelu", False):
            raise ValueError(f"{name}: act_kwargs with quick_gelu (open_clip's QuickGELU takes no arguments)")
        if cfg["act_kwargs"] and set(cfg["act_kwargs"]) - {"approximate"}:
            raise ValueError(f"{name}: act_kwargs {cfg['act_kwargs']} not modelled")
        if cfg["norm_kwargs"] and set(cfg["norm_kwargs"]) - {"eps"}:
            raise ValueError(f"{name}: norm_kwargs {cfg['norm_kwargs']} not modelled")
    if isinstance(v["layers"], (list, tuple)) or v["pos_embed_type"] != "learnable" \
            or isinstance(v["attentional_pool"], str) or v["pool_type"] not in ("tok", "avg"):
        raise ValueError("vision: only the learnable-position ViT with tok/avg pooling is modelled")
    if t.get("text_arch", "clip") != "clip" or t.get("variable_text") or t["embed_cls"] or t["proj_type"] == "none" \
            or t["pool_type"] not in ("argmax", "eos", "last", "first"):
        raise ValueError("text: only the native CLIP text tower with argmax/eos/last/first pooling is modelled")
    if t["pool_type"] == "eos" and t["eos_id"] is None:
        raise ValueError("text pool_type 'eos' needs eos_id (open_clip's _build_text_tower requires it)")
    return v, t


def _blocks(prefix: str, width: int, layers: int, mlp_ratio: float, ls: bool, qk_norm: bool, head_dim: int) -> dict:
    shapes = {}
    hidden = int(width * mlp_ratio)
    for i in range(layers):
        b = f"{prefix}.resblocks.{i}."
        shapes |= {b + "ln_1.weight": (width,), b + "ln_1.bias": (width,),
                   b + "attn.in_proj_weight": (3 * width, width), b + "attn.in_proj_bias": (3 * width,)}
        if qk_norm:
            shapes |= {b + f"attn.{n}.{p}": (head_dim,) for n in ("ln_q", "ln_k") for p in ("weight", "bias")}
        shapes |= {b + "attn.out_proj.weight": (width, width), b + "attn.out_proj.bias": (width,)}
        if ls:
            shapes[b + "ls_1.gamma"] = (width,)
        shapes |= {b + "ln_2.weight": (width,), b + "ln_2.bias": (width,),
                   b + "mlp.c_fc.weight": (hidden, width), b + "mlp.c_fc.bias": (hidden,),
                   b + "mlp.c_proj.weight": (width, hidden), b + "mlp.c_proj.bias": (width,)}
        if ls:
            shapes[b + "ls_2.gamma"] = (width,)
    return shapes


def _ln(name: str, dim: int) -> dict:
    return {f"{name}.weight": (dim,), f"{name}.bias": (dim,)}


def state_dict_shapes(model_cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of open_clip's CLIP for this config: its exact state-dict name and shape."""
    v, t = _resolve(model_cfg)
    embed_dim = model_cfg["embed_dim"]
    vw, tw = v["width"], t["width"]
    (ih, iw), (ph, pw) = _pair(v["image_size"]), _pair(v["patch_size"])
    grid = (ih // ph) * (iw // pw)
    s = {"visual.conv1.weight": (vw, 3, ph, pw), "visual.class_embedding": (vw,),
         "visual.positional_embedding": (grid + 1, vw)}
    if not v["no_ln_pre"]:
        s |= _ln("visual.ln_pre", vw)
    s |= _blocks("visual.transformer", vw, v["layers"], v["mlp_ratio"], v["ls_init_value"] is not None,
                 v["qk_norm"], v["head_width"])
    pool_dim = vw
    if v["attentional_pool"]:
        pool_dim = embed_dim
        a = "visual.attn_pool."
        s[a + "query"] = (v["attn_pooler_queries"], embed_dim)
        if vw == embed_dim:
            s[a + "attn.in_proj_weight"] = (3 * embed_dim, embed_dim)
        else:
            s |= {a + "attn.q_proj_weight": (embed_dim, embed_dim), a + "attn.k_proj_weight": (embed_dim, vw),
                  a + "attn.v_proj_weight": (embed_dim, vw)}
        s |= {a + "attn.in_proj_bias": (3 * embed_dim,), a + "attn.out_proj.weight": (embed_dim, embed_dim),
              a + "attn.out_proj.bias": (embed_dim,)}
        s |= _ln(a + "ln_q", embed_dim) | _ln(a + "ln_k", vw)
    s |= _ln("visual.ln_post", pool_dim)
    s["visual.proj"] = (pool_dim, embed_dim)

    s |= {"token_embedding.weight": (t["vocab_size"], tw), "positional_embedding": (t["context_length"], tw)}
    s |= _blocks("transformer", tw, t["layers"], t["mlp_ratio"], t["ls_init_value"] is not None,
                 t["qk_norm"], tw // t["heads"])
    s |= _ln("ln_final", tw)
    if t["proj_bias"]:
        s |= {"text_projection.weight": (embed_dim, tw), "text_projection.bias": (embed_dim,)}
    else:
        s["text_projection"] = (tw, embed_dim)
    s["logit_scale"] = ()
    if model_cfg.get("init_logit_bias") is not None:
        s["logit_bias"] = ()
    return s


def _random_tensor(name: str, shape: tuple, g: torch.Generator) -> torch.Tensor:
    noise = torch.randn(shape, generator=g)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "gamma":  # LayerScale: far from its 1e-4-ish init, so it visibly matters
        return 0.5 + 0.1 * noise
    if len(shape) == 1 and leaf == "weight":  # LayerNorm scales
        return 1 + 0.1 * noise
    if len(shape) == 1:  # biases, the class embedding
        return 0.1 * noise
    # matrices, scaled by the width they are applied to, so activations stay O(1) through the depth
    if name in ("visual.proj", "text_projection"):  # used as x @ P: the fan-in is the first dimension
        fan_in = shape[0]
    elif name in ("visual.positional_embedding", "positional_embedding", "token_embedding.weight",
                  "visual.attn_pool.query"):
        fan_in = shape[-1]
    else:  # (out, in, ...) weights: Linear and the patch convolution
        fan_in = math.prod(shape[1:])
    return noise * fan_in ** -0.5


def build(model_cfg: dict, seed: int = 0) -> "RefCLIP":
    """open_clip's CLIP for `model_cfg` with every tensor deterministic random (torch.Generator(seed))."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in state_dict_shapes(model_cfg).items():
        if name == "logit_scale":
            tensors[name] = torch.tensor(math.log(100.0))
        elif name == "logit_bias":
            tensors[name] = torch.tensor(float(model_cfg["init_logit_bias"]))
        else:
            tensors[name] = _random_tensor(name, shape, g)
    return RefCLIP(model_cfg, tensors)


# ---------------------------------------------------------------------------------------------------------------
# The forward passes, as plain tensor arithmetic.

def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance, as LayerNorm defines it
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def activation(x: torch.Tensor, quick_gelu: bool, act_kwargs: dict | None) -> torch.Tensor:
    if quick_gelu:
        return x * torch.sigmoid(1.702 * x)
    if (act_kwargs or {}).get("approximate", "none") == "tanh":
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def attention(xq: torch.Tensor, xkv: torch.Tensor, wq, wk, wv, bq, bk, bv, wo, bo, heads: int,
              mask: torch.Tensor | None = None, qk_norm=None) -> torch.Tensor:
    """Multi-head softmax attention of queries `xq` (B, Lq, D) over `xkv` (B, Lk, Dkv) -> (B, Lq, D).

    `mask` is additive (Lq, Lk); `qk_norm(t, "ln_q" | "ln_k")` normalises (B, heads, L, head_dim) tensors."""
    B, Lq, D = xq.shape
    hd = D // heads

    def split(t):  # (B, L, D) -> (B, heads, L, hd)
        return t.reshape(B, t.shape[1], heads, hd).transpose(1, 2)

    q, k, v = split(xq @ wq.T + bq), split(xkv @ wk.T + bk), split(xkv @ wv.T + bv)
    if qk_norm is not None:
        q, k = qk_norm(q, "ln_q"), qk_norm(k, "ln_k")
    scores = (q @ k.transpose(-1, -2)) * hd ** -0.5
    if mask is not None:
        scores = scores + mask
    probs = torch.exp(scores - scores.amax(-1, keepdim=True))
    probs = probs / probs.sum(-1, keepdim=True)
    out = (probs @ v).transpose(1, 2).reshape(B, Lq, D)
    return out @ wo.T + bo


class RefCLIP:
    """open_clip's CLIP as a flat dict of tensors under open_clip's names, and its two encoders."""

    def __init__(self, model_cfg: dict, tensors: dict[str, torch.Tensor]):
        expected = state_dict_shapes(model_cfg)
        if set(tensors) != set(expected):
            raise KeyError(f"missing {sorted(set(expected) - set(tensors))}, "
                           f"unexpected {sorted(set(tensors) - set(expected))}")
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != tuple(shape):
                raise ValueError(f"{name}: shape {tuple(tensors[name].shape)}, expected {shape}")
        self.cfg = model_cfg
        self.vision, self.text = _resolve(model_cfg)
        self.embed_dim = model_cfg["embed_dim"]
        self.quick_gelu = model_cfg.get("quick_gelu", False)
        self.p = {k: v.detach().float() for k, v in tensors.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.p)

    # -- shared pieces -------------------------------------------------------------------------------------
    def _ln(self, x, name: str, cfg: dict, eps: float | None = None):
        if eps is None:
            eps = (cfg["norm_kwargs"] or {}).get("eps", 1e-5)
        return layer_norm(x, self.p[f"{name}.weight"], self.p[f"{name}.bias"], eps)

    def _transformer(self, x, prefix: str, cfg: dict, heads: int, mask=None):
        p = self.p
        for i in range(cfg["layers"]):
            b = f"{prefix}.resblocks.{i}."
            wq, wk, wv = p[b + "attn.in_proj_weight"].chunk(3)
            bq, bk, bv = p[b + "attn.in_proj_bias"].chunk(3)
            qk_norm = (lambda t, n, b=b: self._ln(t, b + "attn." + n, cfg)) if cfg["qk_norm"] else None
            h = self._ln(x, b + "ln_1", cfg)
            h = attention(h, h, wq, wk, wv, bq, bk, bv, p[b + "attn.out_proj.weight"], p[b + "attn.out_proj.bias"],
                          heads, mask, qk_norm)
            x = x + (h * p[b + "ls_1.gamma"] if cfg["ls_init_value"] is not None else h)
            h = self._ln(x, b + "ln_2", cfg)
            h = activation(h @ p[b + "mlp.c_fc.weight"].T + p[b + "mlp.c_fc.bias"], self.quick_gelu, cfg["act_kwargs"])
            h = h @ p[b + "mlp.c_proj.weight"].T + p[b + "mlp.c_proj.bias"]
            x = x + (h * p[b + "ls_2.gamma"] if cfg["ls_init_value"] is not None else h)
        return x

    # -- image ---------------------------------------------------------------------------------------------
    def patch_embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, gh*gw, width): the stride=kernel convolution as patches @ weight (row-major grid)."""
        w = self.p["visual.conv1.weight"]
        ph, pw = w.shape[-2:]
        B, C, H, W = pixels.shape
        gh, gw = H // ph, W // pw
        patches = pixels[:, :, :gh * ph, :gw * pw].reshape(B, C, gh, ph, gw, pw)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, C * ph * pw)
        return patches @ w.reshape(w.shape[0], -1).T

    def _attn_pool(self, x):
        """open_clip's AttentionalPooler: learned queries cross-attend to the tokens -> (B, n_queries, embed_dim)."""
        p, a, v = self.p, "visual.attn_pool.", self.vision
        x = self._ln(x, a + "ln_k", v, eps=1e-5)  # built without the tower's norm_layer: default eps
        q = self._ln(p[a + "query"], a + "ln_q", v, eps=1e-5).expand(x.shape[0], -1, -1)
        if a + "attn.in_proj_weight" in p:
            wq, wk, wv = p[a + "attn.in_proj_weight"].chunk(3)
        else:
            wq, wk, wv = (p[a + f"attn.{n}_proj_weight"] for n in "qkv")
        bq, bk, bv = p[a + "attn.in_proj_bias"].chunk(3)
        return attention(q, x, wq, wk, wv, bq, bk, bv, p[a + "attn.out_proj.weight"], p[a + "attn.out_proj.bias"],
                         v["attn_pooler_heads"])

    def _global_pool(self, x):
        return x[:, 1:].mean(1) if self.vision["pool_type"] == "avg" else x[:, 0]

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """The vision transformer's output tokens (B, 1 + gh*gw, width), before any pooling or ln_post."""
        p, v = self.p, self.vision
        x = self.patch_embed(pixels.float())
        x = torch.cat([p["visual.class_embedding"].expand(x.shape[0], 1, -1), x], dim=1)
        x = x + p["visual.positional_embedding"]
        if not v["no_ln_pre"]:
            x = self._ln(x, "visual.ln_pre", v)
        return self._transformer(x, "visual.transformer", v, v["width"] // v["head_width"])

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        v = self.vision
        x = self.image_tokens(pixels)
        if v["attentional_pool"]:  # final_ln_after_pool is ignored on this path
            pooled = self._global_pool(self._ln(self._attn_pool(x), "visual.ln_post", v))
        elif v["final_ln_after_pool"]:
            pooled = self._ln(self._global_pool(x), "visual.ln_post", v)
        else:
            pooled = self._global_pool(self._ln(x, "visual.ln_post", v))
        return pooled @ self.p["visual.proj"]

    # -- text ----------------------------------------------------------------------------------------------
    def text_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """The text transformer's output after ln_final, (B, context_length, width), before pooling."""
        p, t = self.p, self.text
        L = t["context_length"]
        if ids.shape[1] != L:
            raise ValueError(f"open_clip's CLIP takes ids of length context_length={L}, got {ids.shape[1]}")
        x = p["token_embedding.weight"][ids] + p["positional_embedding"]
        mask = None if t["no_causal_mask"] else torch.full((L, L), float("-inf")).triu(1)
        x = self._transformer(x, "transformer", t, t["heads"], mask)
        return self._ln(x, "ln_final", t)

    def text_pool_index(self, ids: torch.Tensor) -> torch.Tensor:
        """Which position each row is pooled from (open_clip's text_global_pool)."""
        kind, B, L = self.text["pool_type"], ids.shape[0], ids.shape[1]
        if kind == "first":
            return torch.zeros(B, dtype=torch.long)
        if kind == "last":
            return torch.full((B,), L - 1, dtype=torch.long)
        if kind == "argmax":  # first position of the row's largest id (the end-of-text token in CLIP's vocab)
            return ids.argmax(-1)
        return (ids == self.text["eos_id"]).int().argmax(-1)  # 'eos': first eos; position 0 when there is none

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.text_tokens(ids)
        pooled = x[torch.arange(x.shape[0]), self.text_pool_index(ids)]
        if self.text["proj_bias"]:
            return pooled @ self.p["text_projection.weight"].T + self.p["text_projection.bias"]
        return pooled @ self.p["text_projection"]


def write_open_clip(folder: Path, model_cfg: dict, state_dict: dict, safetensors: bool = True) -> Path:
    """A folder as open_clip's Hub repositories hold it: open_clip_config.json beside open_clip_model.safetensors
    (or open_clip_pytorch_model.bin, a torch.save'd state dict)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    tensors = {k: v.detach().clone().contiguous() for k, v in state_dict.items()}
    if safetensors:
        from safetensors.torch import save_file

        save_file(tensors, str(folder / "open_clip_model.safetensors"))
    else:
        torch.save(tensors, folder / "open_clip_pytorch_model.bin")
    return folder
