"""The model against transformers' CLIPModel (the numerical reference), and against answers worked out by hand.

Reference: transformers.CLIPModel, fp32 on the CPU, the same weights (random, seed 0, logit_scale = ln 100)
and the same inputs. Tolerances (the issue's): embeddings atol=1e-5, rtol=1e-5; logits atol=1e-4,
rtol=1e-5 (logits are ~100x larger: cosine similarity times logit_scale.exp() = 100).
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from checkpoints import B32, TINY, hf_config
from compare import assert_close

import miniclip
from miniclip import CLIP, PRESETS, CLIPConfig, TextConfig, VisionConfig
from miniclip.model import interpolate_position_embedding, quick_gelu, quick_gelu_

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


CASES = [  # (model fixture, reference fixture, image size)
    ("tiny", "tiny_ref", 32),
    ("b32", "b32_ref", 224),
]


@pytest.mark.parametrize("ours,ref,size", CASES)
@pytest.mark.parametrize("n_images,lengths", [(1, [5]), (3, [1, 7, 30, 75])])
@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "torch-linear"])
@torch.no_grad()
def test_parity_with_transformers(request, monkeypatch, ours, ref, size, n_images, lengths, onednn):
    monkeypatch.setattr(miniclip.linear, "ONEDNN", onednn)  # both matmul kernels meet the same tolerances
    ours, ref = request.getfixturevalue(ours), request.getfixturevalue(ref)
    px, ids = pixels(n_images, size), token_batch(lengths)  # texts of different lengths padded in one batch

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
    with torch.device("meta"):
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
    assert torch.allclose(quick_gelu(x), torch.tensor([0.0, s, s - 1], dtype=torch.float64), atol=1e-12)
    assert abs(s - 0.8458) < 1e-4


def test_logits_are_100_times_cosine_similarity(tiny):
    # With logit_scale = ln 100, identical directions give 100 and opposite ones -100.
    image = torch.tensor([[3.0, 4.0]])
    texts = torch.tensor([[0.3, 0.4], [-6.0, -8.0], [4.0, -3.0]])  # same, opposite, orthogonal
    cos = F.normalize(image, dim=-1) @ F.normalize(texts, dim=-1).t()
    assert torch.allclose(tiny.logit_scale.exp() * cos, torch.tensor([[100.0, -100.0, 0.0]]), atol=1e-4)


# The same arithmetic, but torch's sigmoid has a vectorised and a scalar kernel that can differ in the last
# bit, and which elements each one gets depends on how a tensor is split among threads: 2 ulp.
SAME_ARITHMETIC = dict(rtol=2 * torch.finfo(torch.float32).eps, atol=0)


def test_quick_gelu_in_place_is_quick_gelu():
    # 2^19 elements per slice / 700 columns = 748 rows: 2000 rows are 3 slices, the last one partial
    x = 4 * torch.randn(4, 500, 700, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    assert quick_gelu_(y) is y
    torch.testing.assert_close(y, quick_gelu(x), **SAME_ARITHMETIC)


@pytest.mark.parametrize("hook", ["module", "global"])
def test_the_mlp_overwrites_no_activation_anyone_else_holds(tiny, hook):
    # The MLP applies quick_gelu in place on fc1's output only when nothing else can hold that tensor. A
    # forward hook that keeps fc1's output (as activation studies do) must find the pre-activation.
    mlp = tiny.visual.blocks[0].mlp
    x = torch.randn(2, 17, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pre = mlp.fc1(x)
        expected = mlp.fc2(quick_gelu(pre))
        torch.testing.assert_close(mlp(x), expected, **SAME_ARITHMETIC)  # no hook: in place
    kept = []
    keep = lambda module, args, out: kept.append(out) if module is mlp.fc1 else None  # noqa: E731
    handle = (mlp.fc1.register_forward_hook(keep) if hook == "module"
              else torch.nn.modules.module.register_module_forward_hook(keep))
    try:
        with torch.no_grad():
            out = mlp(x)
    finally:
        handle.remove()
    assert torch.equal(kept[0], pre)
    torch.testing.assert_close(out, expected, **SAME_ARITHMETIC)


def test_the_mlp_overwrites_only_cpu_activations(tiny, monkeypatch):
    # quick_gelu_ is for glibc's page faults; on another device its slices would be extra kernel launches.
    # The meta device stands in for a GPU here: shapes flow through, no arithmetic runs.
    mlp = copy.deepcopy(tiny.visual.blocks[0].mlp).to("meta")
    def refuse(x):
        raise AssertionError(f"quick_gelu_ ran on a {x.device.type} tensor")
    monkeypatch.setattr("miniclip.model.quick_gelu_", refuse)
    with torch.no_grad():
        assert mlp(torch.empty(2, 17, 48, device="meta")).shape == (2, 17, 48)
        with pytest.raises(AssertionError, match="on a cpu tensor"):  # the same MLP on the CPU does use it
            tiny.visual.blocks[0].mlp(torch.zeros(2, 17, 48))


def test_the_mlp_backpropagates(tiny):
    # with autograd recording, quick_gelu runs out of place: in place would overwrite what backward needs
    mlp = tiny.visual.blocks[0].mlp
    x = torch.randn(2, 17, 48, generator=torch.Generator().manual_seed(0), requires_grad=True)
    mlp(x).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    mlp.fc2(quick_gelu(mlp.fc1(x2))).sum().backward()
    assert torch.equal(x.grad, x2.grad)
    mlp.zero_grad()


@torch.no_grad()
def test_text_is_read_at_the_first_end_of_text_token(tiny):
    # Causal attention: what follows the end-of-text token (padding, or anything else) cannot change the
    # embedding, while changing a token before it must.
    ids = token_batch([6])
    after = ids.clone()
    after[0, 8:20] = torch.arange(100, 112)  # garbage after the end-of-text token at position 7
    before = ids.clone()
    before[0, 3] = 777
    base = tiny.encode_text(ids)
    assert torch.equal(tiny.encode_text(after), base)
    assert not torch.allclose(tiny.encode_text(before), base)


@torch.no_grad()
def test_dropping_positions_after_the_last_end_of_text_is_exact(tiny):
    # The fast path cuts the batch at its longest text; the slow path (hidden states asked for) runs all 77.
    ids = token_batch([3, 10])
    fast = tiny.encode_text(ids)
    full = tiny.encode_text(ids, output_hidden_states=True)
    assert full.last_hidden_state.shape[1] == 77
    assert_close(fast, full.embeds, atol=1e-6, rtol=1e-6, what="cut vs full-length text")


@torch.no_grad()
def test_computing_only_the_class_token_in_the_last_block_is_exact(tiny):
    # encode_image alone runs the last block for the class token only; with hidden states it runs every token
    px = pixels(3, 32)
    assert_close(tiny.encode_image(px), tiny.encode_image(px, output_hidden_states=True).embeds,
                 atol=1e-6, rtol=1e-6, what="pooled-only vs full last block")


def test_the_pooled_last_block_runs_one_token_per_sequence(tiny):
    seen = {}
    for tower in (tiny.visual, tiny.text):
        tower.blocks[-1].mlp.register_forward_hook(lambda m, args, out, tower=tower: seen.setdefault(tower, out))
    try:
        with torch.no_grad():
            tiny(pixels(3, 32), token_batch([3, 10]))
    finally:
        for tower in (tiny.visual, tiny.text):
            tower.blocks[-1].mlp._forward_hooks.clear()
    assert seen[tiny.visual].shape == (3, 1, 48) and seen[tiny.text].shape == (2, 1, 32)
    with pytest.raises(ValueError, match="need_weights and pool_at"):  # (T, T) probabilities need every query
        tiny.visual.blocks[-1](torch.randn(3, 17, 48), need_weights=True, pool_at=torch.zeros(3, dtype=torch.long))


# -----------------------------------------------------------------------------
# miniclip.linear: oneDNN for CPU fp32 inference, F.linear for everything else


def test_onednn_linear_is_a_linear_layer():
    from miniclip.linear import Linear

    torch.manual_seed(0)
    layer, x = Linear(48, 96), torch.randn(2, 5, 48)
    assert isinstance(layer, torch.nn.Linear)
    with torch.no_grad():
        assert layer.use_onednn(x) == (miniclip.linear._onednn_linear is not None)
        assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-6, rtol=1e-6, what="oneDNN vs F.linear")
        assert not layer.use_onednn(x.half()) and not layer.use_onednn(x[:0]) and not layer.use_onednn(x[0, 0])
    assert not layer.use_onednn(x)  # autograd is recording: F.linear, which has a backward
    layer(x).sum().backward()
    assert layer.weight.grad.shape == (96, 48)
    on_meta = copy.deepcopy(layer).to("meta")  # another device (the meta device stands in for a GPU)
    with torch.no_grad():
        assert not on_meta.use_onednn(x.to("meta")) and on_meta(x.to("meta")).shape == (2, 5, 96)


@pytest.mark.parametrize("layout", ["contiguous", "weight transposed", "weight offset", "bias strided",
                                    "bias offset", "input strided", "input transposed", "input 2d", "input 4d"])
def test_onednn_linear_matches_f_linear_for_any_layout(layout):
    # Tensors that share storage with others (views with offsets and strides) arrive through checkpoint
    # conversion and user code; whichever kernel runs, the answer must be F.linear's.
    from miniclip.linear import Linear

    g = torch.Generator().manual_seed(0)
    layer = Linear(64, 32)
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


@pytest.mark.skipif(miniclip.linear._onednn_linear is None, reason="this torch has no oneDNN linear op")
def test_a_loaded_checkpoint_multiplies_on_onednn(b32):
    # the speed-up applies only to contiguous parameters: loading must not leave strided views behind
    layers = {name: m for name, m in b32.named_modules() if isinstance(m, miniclip.linear.Linear)}
    assert len(layers) == 2 * (12 * 4 + 1)  # qkv, proj, fc1, fc2 per block; one projection per tower
    with torch.no_grad():
        assert [name for name, m in layers.items() if not m.use_onednn(torch.zeros(1, 1, m.in_features))] == []


@torch.no_grad()
def test_torch_compile_gives_the_eager_numbers(tiny):
    # Under torch.compile, Linear leaves the kernel to inductor (its lowering of the oneDNN op wants
    # pre-packed weights and fails on plain ones): compiling the model must work and change nothing.
    px = pixels(2, 32)
    compiled = torch.compile(tiny.visual)
    assert_close(compiled(px), tiny.visual(px), atol=1e-5, rtol=1e-5, what="compiled vs eager image embeddings")
    torch._dynamo.reset()


@torch.no_grad()
def test_a_traced_model_records_the_standard_linear_op(tiny):
    # exporters (ONNX through TorchScript, saved TorchScript files) know aten::linear, not oneDNN's op
    graph = str(torch.jit.trace(tiny.visual, pixels(1, 32), check_trace=False).inlined_graph)
    assert "aten::linear" in graph and "mkldnn" not in graph


@pytest.mark.parametrize("height,width", [(32, 32), (37, 45), (8, 64)])
def test_patch_embedding_is_the_strided_convolution(height, width):
    # the matrix-multiply path must give the convolution's numbers, layout included, also when pixels
    # past the last whole patch are left over (37 x 45 with 8-pixel patches)
    from miniclip.model import PatchEmbedding

    g = torch.Generator().manual_seed(0)
    embed, px = PatchEmbedding(24, 8), torch.randn(2, 3, height, width, generator=g)
    embed.weight.data = torch.randn(24, 3, 8, 8, generator=g)
    expected = F.conv2d(px, embed.weight, stride=8)
    with torch.no_grad():
        assert miniclip.linear.use_onednn(px, embed.weight.view(24, -1), None) == \
            (miniclip.linear._onednn_linear is not None)
        assert_close(embed(px), expected, atol=1e-5, rtol=1e-5, what=f"patch embedding {height}x{width}")
    out = embed(px)  # autograd recording: the convolution itself, so exactly F.conv2d
    assert torch.equal(out, expected)
    out.sum().backward()
    assert embed.weight.grad.shape == (24, 3, 8, 8)


def test_onednn_can_be_switched_off(monkeypatch):
    from miniclip.linear import Linear

    monkeypatch.setattr(miniclip.linear, "ONEDNN", False)
    layer, x = Linear(48, 96), torch.randn(2, 5, 48)
    with torch.no_grad():
        assert not layer.use_onednn(x)
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


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
    assert hf_config(TINY).text_config.eos_token_id == 2 and B32["projection_dim"] == 512
