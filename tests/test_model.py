"""The model against transformers' CLIPModel (the numerical reference), against answers worked out by hand, and
the inference speed-ups (miniclip/speedups.py) against the plain model.

Reference: transformers.CLIPModel, fp32 on the CPU, the same weights (random, seed 0, logit_scale = ln 100)
and the same inputs. Tolerances (the issue's): embeddings atol=1e-5, rtol=1e-5; logits atol=1e-4,
rtol=1e-5 (logits are ~100x larger: cosine similarity times logit_scale.exp() = 100). The speed-ups hold
the same tolerances against the plain model: they change how a product is summed (oneDNN), never what.
"""

import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from compare import assert_close

import miniclip
from miniclip import CLIP, PRESETS, CLIPConfig, TextConfig, VisionConfig, speedups
from miniclip.model import Attention, QuickGELU, interpolate_position_embedding

SOT, EOT = 49406, 49407
EMBED_TOL = dict(atol=1e-5, rtol=1e-5)
LOGIT_TOL = dict(atol=1e-4, rtol=1e-5)


def token_batch(lengths, context_length=77, seed=0):
    """Rows of <|startoftext|>, random ordinary tokens, <|endoftext|>, zero padding, as clip.tokenize makes them."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), context_length, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, 0] = SOT
        ids[row, 1 : n + 1] = torch.randint(1, SOT, (n,), generator=g)
        ids[row, n + 1] = EOT
    return ids


def pixels(n, size, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def optimised(model):
    """The shared (plain) fixture model with the speed-ups `miniclip.load` applies, for the `with` block only."""
    speedups.apply(model)
    try:
        yield model
    finally:
        speedups.remove(model)


def as_loaded(model, kind):
    """`model` as CLIP.from_pretrained returns it ("plain") or as miniclip.load does ("optimised")."""
    return optimised(model) if kind == "optimised" else contextlib.nullcontext(model)


KINDS = ["plain", "optimised"]
CASES = [  # (model fixture, reference fixture, image size)
    ("tiny", "tiny_ref", 32),
    ("b32", "b32_ref", 224),
]


@pytest.mark.parametrize("ours,ref,size", CASES)
@pytest.mark.parametrize("n_images,lengths", [(1, [5]), (3, [1, 7, 30, 75])])
@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_parity_with_transformers(request, ours, ref, size, n_images, lengths, kind):
    ref = request.getfixturevalue(ref)
    px, ids = pixels(n_images, size), token_batch(lengths)  # texts of different lengths padded in one batch
    with as_loaded(request.getfixturevalue(ours), kind) as ours:
        assert_close(ours.encode_image(px), ref.get_image_features(pixel_values=px).pooler_output, **EMBED_TOL,
                     what="image embeddings")
        assert_close(ours.encode_text(ids), ref.get_text_features(input_ids=ids).pooler_output, **EMBED_TOL,
                     what="text embeddings")
        logits_per_image, logits_per_text = ours(px, ids)
    out = ref(pixel_values=px, input_ids=ids)
    assert logits_per_image.shape == (n_images, len(lengths)) and logits_per_text.shape == (len(lengths), n_images)
    assert_close(logits_per_image, out.logits_per_image, **LOGIT_TOL, what="logits_per_image")
    assert_close(logits_per_text, out.logits_per_text, **LOGIT_TOL, what="logits_per_text")


def test_logit_scale_of_loaded_checkpoint_is_100(b32):
    assert abs(b32.logit_scale.exp().item() - 100) < 1e-4


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_counts_match_transformers(name):
    from transformers import CLIPConfig as HFConfig, CLIPModel

    cfg = PRESETS[name]
    v, t = cfg.vision, cfg.text
    hf = HFConfig(
        vision_config=dict(hidden_size=v.width, intermediate_size=v.mlp_width, num_hidden_layers=v.layers,
                           num_attention_heads=v.heads, image_size=v.image_size, patch_size=v.patch_size),
        text_config=dict(hidden_size=t.width, intermediate_size=t.mlp_width, num_hidden_layers=t.layers,
                         num_attention_heads=t.heads),
        projection_dim=cfg.embed_dim,
    )
    with torch.device("meta"):  # sizes only: no memory, no initialisation
        ours, theirs = CLIP(cfg), CLIPModel(hf)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(theirs)
    if name == "ViT-B/32":
        assert count(ours) == 151_277_313  # the figure the issue quotes for transformers' ViT-B/32


def test_preset_sizes_are_the_papers():
    # Radford et al. 2021, table 19/20: ViT-L/14 has a 1024-wide, 24-layer image tower and a 768-wide text tower.
    l14 = PRESETS["ViT-L/14"]
    assert (l14.vision.width, l14.vision.layers, l14.vision.heads, l14.vision.patch_size) == (1024, 24, 16, 14)
    assert (l14.text.width, l14.text.heads, l14.embed_dim) == (768, 12, 768)
    assert PRESETS["ViT-L/14@336px"].vision.num_positions == (336 // 14) ** 2 + 1 == 577
    assert PRESETS["ViT-B/32"].vision.num_positions == 50


# -----------------------------------------------------------------------------
# Known answers, worked out by hand


def test_quick_gelu_known_values():
    # x * sigmoid(1.702 x): at 0 it is 0; at 1 it is 1 / (1 + e^-1.702) = 0.8458...; at -1 it is that minus 1
    x = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
    s = 1 / (1 + math.exp(-1.702))
    assert torch.allclose(QuickGELU()(x), torch.tensor([0.0, s, s - 1], dtype=torch.float64), atol=1e-12)
    assert abs(s - 0.8458) < 1e-4


@torch.no_grad()
def test_logits_are_100_times_cosine_similarity(tiny, monkeypatch):
    # The model's forward on embeddings chosen by hand: with logit_scale = ln 100, identical directions give
    # 100, opposite ones -100, orthogonal ones 0, whatever the vectors' lengths.
    image = torch.zeros(1, 16)
    image[0, :2] = torch.tensor([3.0, 4.0])
    texts = torch.zeros(3, 16)
    texts[:, :2] = torch.tensor([[0.3, 0.4], [-6.0, -8.0], [4.0, -3.0]])  # same, opposite, orthogonal
    monkeypatch.setattr(tiny, "encode_image", lambda px: image)
    monkeypatch.setattr(tiny, "encode_text", lambda ids: texts)
    logits_per_image, logits_per_text = tiny(pixels(1, 32), token_batch([1, 2, 3]))
    assert_close(logits_per_image, torch.tensor([[100.0, -100.0, 0.0]]), atol=1e-4, rtol=0, what="logits")
    assert torch.equal(logits_per_text, logits_per_image.t())


@torch.no_grad()
def test_text_is_read_at_the_first_end_of_text_token(tiny):
    # Causal attention: what follows the end-of-text token (padding, or anything else, even a second
    # end-of-text token) cannot change the embedding, while changing a token before it must.
    ids = token_batch([6])
    after = ids.clone()
    after[0, 8:20] = torch.arange(100, 112)  # garbage after the end-of-text token at position 7
    after[0, 12] = EOT
    before = ids.clone()
    before[0, 3] = 777
    for kind in KINDS:
        with as_loaded(tiny, kind) as model:
            base = model.encode_text(ids)
            assert torch.equal(model.encode_text(after), base), kind
            assert not torch.allclose(model.encode_text(before), base), kind


# -----------------------------------------------------------------------------
# The plain model and PyTorch's tools


@torch.no_grad()
def embeddings(model, px, ids):
    return model.encode_image(px), model.encode_text(ids)


def test_grad_mode_does_not_change_the_plain_models_numbers(tiny):
    # Recording autograd or not, the plain model runs the same kernels: the same embeddings, bit for bit.
    px, ids = pixels(3, 32), token_batch([2, 9, 30])
    image, text = embeddings(tiny, px, ids)
    assert torch.equal(tiny.encode_image(px), image) and torch.equal(tiny.encode_text(ids), text)
    with torch.inference_mode():
        assert torch.equal(tiny.encode_image(px), image) and torch.equal(tiny.encode_text(ids), text)


class Encoder(torch.nn.Module):
    """One of CLIP's methods as a module's forward, for tools that take a module (torch.export)."""

    def __init__(self, model, method):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *inputs):
        return getattr(self.model, self.method)(*inputs)


@pytest.mark.parametrize("kind", KINDS)
def test_torch_export_with_a_dynamic_batch(tiny, kind):
    # torch.export records the graph once, for any batch size; it fails on data-dependent Python (an int() of
    # a tensor). The text graph must read each row's own end-of-text token, so it is checked on a batch whose
    # texts end elsewhere than the example's.
    images, texts = torch.export.Dim("images", min=1, max=64), torch.export.Dim("texts", min=1, max=64)
    px, ids = pixels(2, 32), token_batch([3, 5])
    other_px, other_ids = pixels(5, 32, seed=1), token_batch([0, 40, 7, 75], seed=1)
    cases = [("encode_image", (px,), ({0: images},), (other_px,)),
             ("encode_text", (ids,), ({0: texts},), (other_ids,)),
             ("forward", (px, ids), ({0: images}, {0: texts}), (other_px, other_ids))]
    with as_loaded(tiny, kind) as model, torch.no_grad():
        for method, example, dynamic_shapes, inputs in cases:
            program = torch.export.export(Encoder(model, method), example, dynamic_shapes=(dynamic_shapes,))
            got, expected = program.module()(*inputs), getattr(model, method)(*inputs)
            for a, b in zip(*([got, expected] if method == "forward" else [[got], [expected]])):
                assert_close(a, b, **LOGIT_TOL, what=f"exported {method}, {kind}")


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_a_traced_text_tower_keeps_reading_each_rows_end_of_text_token(tiny, kind):
    # torch.jit.trace records one run's operations: nothing about the example's lengths may be baked in.
    with as_loaded(tiny, kind) as model:
        traced = torch.jit.trace(model.text, token_batch([3, 5]), check_trace=False)
        ids = token_batch([40, 0, 70])
        assert_close(traced(ids), model.text(ids), **EMBED_TOL, what=f"traced text tower, {kind}")
        graph = str(torch.jit.trace(model.visual, pixels(1, 32), check_trace=False).inlined_graph)
    # exporters (ONNX through TorchScript, saved TorchScript files) know aten::linear, not oneDNN's op
    assert "aten::linear" in graph and "mkldnn" not in graph


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_fx_symbolic_trace_of_the_image_tower(tiny, kind):
    with as_loaded(tiny, kind) as model:
        flags = dict(output_hidden_states=False, output_attentions=False, interpolate_pos_encoding=False)
        graph_module = torch.fx.symbolic_trace(model.visual, concrete_args=flags)
        px = pixels(3, 32)
        assert_close(graph_module(px), model.visual(px), **EMBED_TOL, what=f"fx-traced image tower, {kind}")


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_torch_compile_gives_the_eager_numbers(tiny, kind):
    # Under torch.compile every speed-up steps aside and inductor picks its own kernels (its lowering of the
    # oneDNN op wants pre-packed weights and fails on plain ones): compiling must work and change nothing.
    px = pixels(2, 32)
    with as_loaded(tiny, kind) as model:
        compiled = torch.compile(model.visual)
        assert_close(compiled(px), model.visual(px), atol=1e-5, rtol=1e-5, what=f"compiled image embeddings, {kind}")
    torch._dynamo.reset()


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated", "ignore:torch.quantize_per_tensor")
def test_dynamic_quantization_swaps_every_linear_layer(tiny_dir):
    # quantize_dynamic matches module types exactly: the plain model's layers are nn.Linear, all 18 of the tiny
    # model's (4 a block, 2 blocks a tower, and a projection per tower). int8 weights move the embeddings
    # by about 1%: cosine similarity with the fp32 ones above 0.99 (seen: > 0.999).
    from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

    for model in (CLIP.from_pretrained(tiny_dir), speedups.remove(miniclip.load(tiny_dir)[0])):
        assert sum(type(m) is torch.nn.Linear for m in model.modules()) == 18
        quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
        assert sum(type(m) is QuantizedLinear for m in quantized.modules()) == 18
        assert not any(type(m) is torch.nn.Linear for m in quantized.modules())
        px, ids = pixels(4, 32), token_batch([2, 5, 9, 30])
        for a, b in zip(embeddings(model, px, ids), embeddings(quantized, px, ids)):
            assert F.cosine_similarity(a, b).min() > 0.99


@pytest.mark.parametrize("kind", KINDS)
def test_autocast_gives_bfloat16_linear_layers(tiny, kind):
    # Under autocast, linear layers compute in the autocast dtype, as nn.Linear does anywhere.
    seen = set()
    with as_loaded(tiny, kind) as model:
        handles = [m.register_forward_hook(lambda m, args, out: seen.add(out.dtype))
                   for m in model.modules() if isinstance(m, torch.nn.Linear)]
        try:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                model.encode_image(pixels(2, 32)), model.encode_text(token_batch([3, 4]))
        finally:
            for handle in handles:
                handle.remove()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # unhooked
            image, text = model.encode_image(pixels(2, 32)), model.encode_text(token_batch([3, 4]))
    assert image.dtype == text.dtype == torch.bfloat16
    assert seen == {torch.bfloat16}


# -----------------------------------------------------------------------------
# Hooks, and a reader's edit: every output goes through the same modules


def scaled_attention_forward(self, x, causal=False, need_weights=False):
    """A reader's edit of Attention.forward: the attention scores halved (a temperature of 2), in both the
    fused and the written-out computation."""
    B, T, C = x.shape
    q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
    if self.qk_norm:
        q, k = self.ln_q(q), self.ln_k(k)
    scale = 0.5 * q.size(-1) ** -0.5
    if need_weights:
        scores = (q @ k.transpose(-2, -1)) * scale
        if causal:
            scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        weights = scores.softmax(dim=-1)
        y = weights @ v
    else:
        y, weights = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale), None
    return self.proj(y.transpose(1, 2).reshape(B, T, C)), weights


@torch.no_grad()
def every_output(model, px, ids):
    image = model.encode_image(px, output_hidden_states=True, output_attentions=True)
    text = model.encode_text(ids, output_hidden_states=True, output_attentions=True)
    return {"encode_image": model.encode_image(px), "encode_text": model.encode_text(ids), "logits": model(px, ids)[0],
            "image hidden state": image.hidden_states[-1], "image attentions": image.attentions[-1],
            "image embeds with intermediates": image.embeds, "text embeds with intermediates": text.embeds,
            "text hidden state": text.hidden_states[-1],
            "text attentions": text.attentions[-1], "patch tokens": model.encode_image_patches(px),
            "clip-skip features": model.encode_text_tokens(ids, clip_skip=0)}


def test_a_readers_edit_of_attention_reaches_every_output(tiny, monkeypatch):
    # The reader's tour: edit Attention.forward, and encode_image, encode_text, forward, hidden states,
    # attentions, patch tokens and clip-skip features all change, in the plain model and in the optimised one
    # alike (its shortcuts step aside for a patched class).
    px, ids = pixels(2, 32), token_batch([3, 11])
    before = every_output(tiny, px, ids)
    monkeypatch.setattr(Attention, "forward", scaled_attention_forward)
    after = every_output(tiny, px, ids)
    with optimised(tiny):
        after_optimised = every_output(tiny, px, ids)
    for name in before:
        assert not torch.allclose(before[name], after[name], atol=1e-4), f"{name} did not change"
        assert_close(after_optimised[name], after[name], **LOGIT_TOL, what=f"{name}, optimised vs plain")
    # and identically: each embedding as encode_* computes it alone and alongside the intermediates
    for tower in ("image", "text"):
        assert_close(after[f"encode_{tower}"], after[f"{tower} embeds with intermediates"], **EMBED_TOL,
                     what=f"{tower} embeddings, alone vs with intermediates")


@pytest.mark.parametrize("kind", KINDS)
def test_hooks_fire_on_every_module_including_the_activation(tiny, kind):
    # A forward hook on every module (but the ModuleList containers, which are never called) fires during
    # encode_image and encode_text, and sees the same tensors with or without the speed-ups: a hooked model
    # runs the plain modules' code.
    seen, handles = {}, []
    px, ids = pixels(2, 32), token_batch([3, 11])
    with as_loaded(tiny, kind) as model:
        for tower in (model.visual, model.text):
            for name, module in tower.named_modules():
                if not isinstance(module, torch.nn.ModuleList) and module is not tower:
                    handles.append(module.register_forward_hook(
                        lambda m, args, out, name=f"{tower is model.text}.{name}": seen.setdefault(name, out)))
        try:
            with torch.no_grad():
                model.encode_image(px), model.encode_text(ids)
        finally:
            for handle in handles:
                handle.remove()
    assert len(seen) == len(handles)  # every hooked module ran
    act = seen["False.blocks.0.mlp.act"]  # the post-activation neurons, (B, T, mlp_width)
    assert act.shape == (2, 17, 96)
    assert_close(act, QuickGELU()(seen["False.blocks.0.mlp.fc1"]), atol=0, rtol=0, what="hooked activation")
    assert seen["True.blocks.1.mlp.act"].shape == (2, 77, 64)  # every text position: nothing cut while hooked


# -----------------------------------------------------------------------------
# The speed-ups against the plain model


def variant(**options):
    """A tiny, randomly initialised model with open_clip's options (each test_open_clip_options checks against
    open_clip's arithmetic on the plain model); seed 0."""
    vision, text = {k: v for k, v in options.items() if k != "text"}, options.get("text", {})
    torch.manual_seed(0)
    return CLIP(CLIPConfig(VisionConfig(image_size=32, patch_size=8, width=48, layers=2, heads=4, mlp_width=96,
                                        **vision),
                           TextConfig(width=32, layers=2, heads=4, mlp_width=64, **text), embed_dim=16)).eval()


VARIANTS = {
    "openai": {},
    "gelu, layer scale, qk norm": dict(activation="gelu", layer_scale=True, qk_norm=True,
                                       text=dict(activation="gelu_tanh", layer_scale=True, qk_norm=True)),
    "avg pool, no ln_pre": dict(pool="avg", ln_pre=False),
    "final ln after pool": dict(final_ln_after_pool=True),
    "attentional pooler": dict(attn_pool_queries=3, attn_pool_heads=4),
    "text pooled at the last position, bidirectional": dict(text=dict(pool="last", causal=False, proj_bias=True)),
    "text pooled at the first position": dict(text=dict(pool="first")),
}


@pytest.mark.parametrize("name", list(VARIANTS))
@torch.no_grad()
def test_the_speedups_give_the_plain_models_numbers(name):
    # Every path, plain against optimised, to the parity tolerances: the speed-ups change how a product is
    # summed (oneDNN), never what is computed.
    plain = variant(**VARIANTS[name])
    fast = speedups.apply(copy.deepcopy(plain))
    px, ids = pixels(3, 32), token_batch([0, 7, 30])
    for what, call in [("image", lambda m: m.encode_image(px)), ("text", lambda m: m.encode_text(ids)),
                       ("logits", lambda m: m(px, ids)[0]),
                       ("image hidden", lambda m: m.encode_image(px, output_hidden_states=True).last_hidden_state),
                       ("text hidden", lambda m: m.encode_text(ids, output_hidden_states=True).last_hidden_state),
                       ("clip skip", lambda m: m.encode_text_tokens(ids, clip_skip=1)),
                       ("bigger image", lambda m: m.encode_image(pixels(1, 48), interpolate_pos_encoding=True))]:
        assert_close(call(fast), call(plain), **(LOGIT_TOL if what == "logits" else EMBED_TOL), what=f"{name}: {what}")


def test_load_applies_the_speedups_and_from_pretrained_does_not(tiny_dir):
    fast, plain = miniclip.load(tiny_dir)[0], CLIP.from_pretrained(tiny_dir)
    assert type(fast.visual) is speedups.PooledVisionTransformer and type(fast.text) is speedups.PooledTextTransformer
    assert type(fast.visual.patch_embed) is speedups.PatchEmbeddingAsMatmul
    assert {type(m) for m in fast.modules() if isinstance(m, torch.nn.Linear)} == {speedups.OneDNNLinear}
    assert {type(m.mlp) for m in fast.visual.blocks} == {speedups.InPlaceMLP}
    for model in (plain, miniclip.load(tiny_dir, speedups=False)[0]):
        assert not any(type(m).__module__ == "miniclip.speedups" for m in model.modules())
    assert fast.state_dict().keys() == plain.state_dict().keys()
    assert speedups.apply(fast) is fast and type(fast.visual) is speedups.PooledVisionTransformer  # idempotent
    speedups.remove(fast)
    assert [type(m) for m in fast.modules()] == [type(m) for m in plain.modules()]


def record_query_lengths(monkeypatch):
    """The number of queries of every scaled_dot_product_attention call, in order."""
    lengths, sdpa = [], F.scaled_dot_product_attention

    def recording(q, k, v, *args, **kwargs):
        lengths.append(q.size(-2))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    return lengths


@torch.no_grad()
def test_the_last_block_runs_one_query_and_the_text_stops_at_the_last_end_of_text(tiny, monkeypatch):
    lengths = record_query_lengths(monkeypatch)
    with optimised(tiny):
        tiny(pixels(3, 32), token_batch([3, 10]))
        assert lengths == [17, 1, 12, 1]  # image: 17 tokens, then the class token; text: up to position 11
        lengths.clear()
        tiny.encode_text(token_batch([3, 10]), output_hidden_states=True)
        assert lengths == [77, 77]  # hidden states are asked for: every position, every block
        lengths.clear()
        tiny.encode_image(pixels(1, 32), output_attentions=True)  # the probabilities come from the written-out path
        assert lengths == []
    lengths.clear()
    tiny(pixels(3, 32), token_batch([3, 10]))
    assert lengths == [17, 17, 77, 77]  # the plain model: every token, every block


@torch.no_grad()
def test_the_shortcuts_step_aside_for_a_replaced_module(tiny):
    # A user's module in place of the last block's MLP (here: one that doubles its output): the optimised model
    # must run it on every token, as the plain model does.
    class Doubled(torch.nn.Module):
        def __init__(self, mlp):
            super().__init__()
            self.mlp = mlp

        def forward(self, x):
            return 2 * self.mlp(x)

    px, ids = pixels(2, 32), token_batch([3, 9])
    plain, fast = copy.deepcopy(tiny), speedups.apply(copy.deepcopy(tiny))
    for model in (plain, fast):
        for tower in (model.visual, model.text):
            tower.blocks[-1].mlp = Doubled(tower.blocks[-1].mlp)
    assert_close(fast.encode_image(px), plain.encode_image(px), **EMBED_TOL, what="image, replaced MLP")
    assert_close(fast.encode_text(ids), plain.encode_text(ids), **EMBED_TOL, what="text, replaced MLP")
    assert not torch.allclose(plain.encode_image(px), tiny.encode_image(px), atol=1e-4)


# The same arithmetic, but torch's sigmoid has a vectorised and a scalar kernel that can differ in the last
# bit, and which elements each one gets depends on how a tensor is split among threads: 2 ulp.
SAME_ARITHMETIC = dict(rtol=2 * torch.finfo(torch.float32).eps, atol=0)


def test_quick_gelu_in_place_is_quick_gelu():
    # 2^19 elements per slice / 700 columns = 748 rows: 2000 rows are 3 slices, the last one partial
    x = 4 * torch.randn(4, 500, 700, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    assert speedups.quick_gelu_(y) is y
    torch.testing.assert_close(y, QuickGELU()(x), **SAME_ARITHMETIC)


def test_the_mlp_overwrites_no_activation_anyone_else_holds(tiny):
    # The optimised MLP applies quick_gelu in place on fc1's output only when nothing else can hold that
    # tensor. A forward hook that keeps fc1's output (as activation studies do) must find the pre-activation.
    mlp = speedups.apply(copy.deepcopy(tiny.visual.blocks[0].mlp))
    assert type(mlp) is speedups.InPlaceMLP
    x = torch.randn(2, 17, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pre = mlp.fc1(x)
        expected = mlp.fc2(QuickGELU()(pre))
        torch.testing.assert_close(mlp(x), expected, **SAME_ARITHMETIC)  # no hook: in place
        kept = []
        handle = mlp.fc1.register_forward_hook(lambda module, args, out: kept.append(out))
        try:
            out = mlp(x)
        finally:
            handle.remove()
    assert torch.equal(kept[0], pre)
    torch.testing.assert_close(out, expected, **SAME_ARITHMETIC)


def test_the_mlp_backpropagates(tiny):
    # with autograd recording, quick_gelu runs out of place: in place would overwrite what backward needs
    mlp = speedups.apply(copy.deepcopy(tiny.visual.blocks[0].mlp))
    x = torch.randn(2, 17, 48, generator=torch.Generator().manual_seed(0), requires_grad=True)
    mlp(x).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    tiny.visual.blocks[0].mlp(x2).sum().backward()
    assert torch.equal(x.grad, x2.grad)
    tiny.visual.blocks[0].mlp.zero_grad(set_to_none=True)


@pytest.mark.skipif(speedups.onednn_linear is None, reason="this torch has no oneDNN linear op")
def test_the_onednn_linear_layer_steps_aside_where_it_does_not_fit(monkeypatch):
    monkeypatch.setattr(speedups, "PREFER_ONEDNN", True)  # as on a CPU where oneDNN is the faster kernel
    calls, op = [], speedups.onednn_linear
    monkeypatch.setattr(speedups, "onednn_linear", lambda *args: calls.append(args[0].shape) or op(*args))
    torch.manual_seed(0)
    layer, x = speedups.OneDNNLinear(48, 96), torch.randn(2, 5, 48)
    assert isinstance(layer, torch.nn.Linear)
    with torch.no_grad():
        assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-6, rtol=1e-6, what="oneDNN vs F.linear")
        assert calls == [(2, 5, 48)]
        for other in (x[:0], x[0, 0]):  # an empty batch, a single vector: F.linear
            assert torch.equal(layer(other), F.linear(other, layer.weight, layer.bias))
        double = copy.deepcopy(layer).double()  # another dtype
        assert torch.equal(double(x.double()), F.linear(x.double(), double.weight, double.bias))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert layer(x).dtype == torch.bfloat16
        # another device (the meta device: shapes only, so this shows which kernel is chosen, nothing more)
        assert copy.deepcopy(layer).to("meta")(x.to("meta")).shape == (2, 5, 96)
    out = layer(x)  # autograd is recording: F.linear, which has a backward
    assert torch.equal(out, F.linear(x, layer.weight, layer.bias))
    out.sum().backward()
    assert layer.weight.grad.shape == (96, 48)
    assert calls == [(2, 5, 48)]


@pytest.mark.parametrize("layout", ["contiguous", "weight transposed", "weight offset", "bias strided",
                                    "bias offset", "input strided", "input transposed", "input 2d", "input 4d"])
def test_onednn_linear_matches_f_linear_for_any_layout(layout, monkeypatch):
    monkeypatch.setattr(speedups, "PREFER_ONEDNN", speedups.onednn_linear is not None)  # oneDNN on any CPU
    # Tensors that share storage with others (views with offsets and strides) arrive through checkpoint
    # conversion and user code; whichever kernel runs, the answer must be F.linear's.
    g = torch.Generator().manual_seed(0)
    layer = speedups.OneDNNLinear(64, 32)
    weight, bias, x = torch.randn(32, 64, generator=g), torch.randn(32, generator=g), torch.randn(4, 7, 64, generator=g)
    if layout == "weight transposed":
        weight = torch.randn(64, 32, generator=g).t()
    elif layout == "weight offset":
        weight = torch.randn(2, 32, 64, generator=g)[1]
    elif layout == "bias strided":
        bias = torch.randn(32, 2, generator=g)[:, 0]
    elif layout == "bias offset":
        bias = torch.randn(64, generator=g)[32:]
    elif layout == "input strided":
        x = torch.randn(4, 7, 128, generator=g)[..., ::2]
    elif layout == "input transposed":
        x = torch.randn(7, 4, 64, generator=g).transpose(0, 1)
    elif layout == "input 2d":
        x = x[0]
    elif layout == "input 4d":
        x = x.view(2, 2, 7, 64)
    layer.weight, layer.bias = torch.nn.Parameter(weight), torch.nn.Parameter(bias)
    with torch.no_grad():
        assert_close(layer(x), F.linear(x, weight, bias), atol=1e-5, rtol=1e-5, what=f"Linear, {layout}")


@pytest.mark.skipif(speedups.onednn_linear is None, reason="this torch has no oneDNN linear op")
def test_the_linear_layers_keep_torchs_kernel_where_onednn_is_not_preferred(monkeypatch):
    monkeypatch.setattr(speedups, "PREFER_ONEDNN", False)  # as on an Intel CPU
    monkeypatch.setattr(speedups, "onednn_linear", lambda *args: pytest.fail("oneDNN was called"))
    layer, x = speedups.OneDNNLinear(48, 96), torch.randn(2, 5, 48)
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_onednn_is_preferred_except_on_intel_cpus():
    intel = speedups.cpu_vendor() == "GenuineIntel"
    assert speedups.PREFER_ONEDNN == (speedups.onednn_linear is not None and not intel)


@pytest.mark.skipif(speedups.onednn_linear is None, reason="this torch has no oneDNN linear op")
def test_a_loaded_checkpoint_multiplies_on_onednn(b32_dir):
    # the speed-up applies only to contiguous parameters: loading must not leave strided views behind
    model = miniclip.load(b32_dir)[0]
    layers = {name: m for name, m in model.named_modules() if isinstance(m, speedups.OneDNNLinear)}
    assert len(layers) == 2 * (12 * 4 + 1)  # qkv, proj, fc1, fc2 per block; one projection per tower
    assert [name for name, m in layers.items()
            if not speedups.fits_onednn(torch.zeros(1, m.in_features), m.weight, m.bias)] == []


@pytest.mark.parametrize("height,width", [(32, 32), (37, 45), (8, 64)])
def test_patch_embedding_as_a_matrix_multiply_is_the_strided_convolution(height, width):
    # the matrix-multiply path must give the convolution's numbers, layout included, also when pixels
    # past the last whole patch are left over (37 x 45 with 8-pixel patches)
    g = torch.Generator().manual_seed(0)
    embed = torch.nn.Conv2d(3, 24, kernel_size=8, stride=8, bias=False)
    px = torch.randn(2, 3, height, width, generator=g)
    embed.weight.data = torch.randn(24, 3, 8, 8, generator=g)
    expected = F.conv2d(px, embed.weight, stride=8)
    speedups.apply(embed)  # a lone convolution is no ViT's patch embedding: left alone
    assert type(embed) is torch.nn.Conv2d
    embed.__class__ = speedups.PatchEmbeddingAsMatmul
    with torch.no_grad():
        assert_close(embed(px), expected, atol=1e-5, rtol=1e-5, what=f"patch embedding {height}x{width}")
    out = embed(px)  # autograd recording: the convolution itself, so exactly F.conv2d
    assert torch.equal(out, expected)
    out.sum().backward()
    assert embed.weight.grad.shape == (24, 3, 8, 8)


def test_interpolating_to_the_trained_grid_is_the_identity():
    pos = torch.randn(1 + 7 * 7, 16)
    assert interpolate_position_embedding(pos, (7, 7), (7, 7)) is pos
    bigger = interpolate_position_embedding(pos, (7, 7), (14, 10))
    assert bigger.shape == (1 + 14 * 10, 16) and torch.equal(bigger[0], pos[0])  # class position untouched


def test_untrained_model_is_initialised_and_runs():
    torch.manual_seed(0)
    cfg = CLIPConfig(VisionConfig(image_size=32, patch_size=8, width=64, layers=2, heads=2, mlp_width=128),
                     TextConfig(width=32, layers=2, heads=2, mlp_width=64), embed_dim=16)
    model = CLIP(cfg).eval()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert abs(model.logit_scale.item() - math.log(1 / 0.07)) < 1e-6  # the paper's initial temperature, 0.07
    logits, _ = model(pixels(2, 32), token_batch([2, 4]))
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


def test_config_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="divisible"):
        CLIPConfig(VisionConfig(width=100, heads=3))
    with pytest.raises(ValueError, match="activation"):
        CLIPConfig(text=TextConfig(activation="relu"))


def test_public_names():
    assert miniclip.CLIP is CLIP and miniclip.PRESETS["ViT-B/16"].vision.patch_size == 16
    assert miniclip.speedups is speedups and callable(miniclip.speedups.apply)
