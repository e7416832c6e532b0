"""Looking inside the model: hidden states, attention maps, clip-skip text features, patch tokens, other input
resolutions, hooks and the relevance map, each against transformers' CLIPModel where it has the same thing.

Reference: transformers' CLIPModel with eager attention (the path that returns attention probabilities),
fp32 on the CPU, same weights. Tolerance atol=1e-5 at every layer (the issue's); rtol=1e-5.
"""

import pytest
import torch
from compare import assert_close
from PIL import Image
from test_model import pixels, token_batch

import miniclip
from miniclip import EncoderOutput
from miniclip import model as model_module
from miniclip.relevance import window_starts, windows  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture
def eager(request):
    """A reference model switched to eager attention for one test, then switched back."""
    def switch(ref):
        before = ref.config._attn_implementation
        ref.set_attn_implementation("eager")
        request.addfinalizer(lambda: ref.set_attn_implementation(before))
        return ref
    return switch


CASES = [("tiny", "tiny_ref", 32), ("b32", "b32_ref", 224)]


@pytest.mark.parametrize("ours,ref,size", CASES)
@torch.no_grad()
def test_image_hidden_states_and_attentions_equal_transformers(request, eager, ours, ref, size):
    ours, ref = request.getfixturevalue(ours), eager(request.getfixturevalue(ref))
    px = pixels(2, size)
    out = ours.encode_image(px, output_hidden_states=True, output_attentions=True)
    theirs = ref.vision_model(pixel_values=px, output_hidden_states=True, output_attentions=True)
    assert isinstance(out, EncoderOutput)
    n_layers = ours.config.vision.layers
    assert len(out.hidden_states) == len(theirs.hidden_states) == n_layers + 1
    assert len(out.attentions) == len(theirs.attentions) == n_layers
    for i, (a, b) in enumerate(zip(out.hidden_states, theirs.hidden_states)):
        assert_close(a, b, **TOL, what=f"image hidden_states[{i}]")
    for i, (a, b) in enumerate(zip(out.attentions, theirs.attentions)):
        assert a.shape == (2, ours.config.vision.heads, 1 + ours.config.vision.grid_size ** 2, 1 + ours.config.vision.grid_size ** 2)
        assert_close(a, b, **TOL, what=f"image attentions[{i}]")
    # transformers' vision last_hidden_state is before post_layernorm; ours is after it, for every token
    after_ln = ref.vision_model.post_layernorm(theirs.last_hidden_state)
    assert_close(out.last_hidden_state, after_ln, **TOL, what="last_hidden_state (patches too)")
    assert_close(out.embeds, ref.get_image_features(pixel_values=px).pooler_output, **TOL, what="image embeds")


@pytest.mark.parametrize("ours,ref,size", CASES)
@torch.no_grad()
def test_text_hidden_states_and_attentions_equal_transformers_on_a_padded_batch(request, eager, ours, ref, size):
    ours, ref = request.getfixturevalue(ours), eager(request.getfixturevalue(ref))
    ids = token_batch([2, 11, 40])  # different lengths, zero-padded to 77
    out = ours.encode_text(ids, output_hidden_states=True, output_attentions=True)
    theirs = ref.text_model(input_ids=ids, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == ours.config.text.layers + 1 and len(out.attentions) == ours.config.text.layers
    for i, (a, b) in enumerate(zip(out.hidden_states, theirs.hidden_states)):
        assert_close(a, b, **TOL, what=f"text hidden_states[{i}]")
    for i, (a, b) in enumerate(zip(out.attentions, theirs.attentions)):
        assert a.shape == (3, ours.config.text.heads, 77, 77)
        assert_close(a, b, **TOL, what=f"text attentions[{i}]")
    assert_close(out.last_hidden_state, theirs.last_hidden_state, **TOL, what="text last_hidden_state")


def test_attention_is_causal_in_the_text_and_not_in_the_image(tiny):
    with torch.no_grad():
        text = tiny.encode_text(token_batch([5]), output_attentions=True).attentions[0]
        image = tiny.encode_image(pixels(1, 32), output_attentions=True).attentions[0]
    assert torch.all(text[0, :, 3, 4:] == 0) and torch.all(text[0, :, 3, :4] > 0)  # token 3 sees tokens 0..3
    assert torch.all(image > 0)
    assert_close(text.sum(-1), torch.ones_like(text.sum(-1)), atol=1e-6, rtol=0, what="rows sum to 1")


@pytest.mark.parametrize("ours,ref,size", CASES)
@torch.no_grad()
def test_clip_skip_text_features_equal_transformers(request, ours, ref, size):
    ours, ref = request.getfixturevalue(ours), request.getfixturevalue(ref)
    ids = token_batch([4, 20])
    theirs = ref.text_model(input_ids=ids, output_hidden_states=True)
    penultimate = ref.text_model.final_layer_norm(theirs.hidden_states[-2])
    assert_close(ours.encode_text_tokens(ids, clip_skip=1), penultimate, **TOL, what="clip skip 1")
    assert_close(ours.encode_text_tokens(ids), theirs.last_hidden_state, **TOL, what="clip skip 0")


@torch.no_grad()
def test_patch_tokens_are_the_last_hidden_state_without_the_class_token(tiny, tiny_ref):
    # transformers' vision last_hidden_state is before post_layernorm; ours is after it, class token dropped
    px = pixels(2, 32)
    theirs = tiny_ref.vision_model.post_layernorm(tiny_ref.vision_model(pixel_values=px).last_hidden_state)[:, 1:]
    ours = tiny.encode_image_patches(px)
    assert ours.shape == (2, 16, 48)
    assert_close(ours, theirs, **TOL, what="patch tokens")


@pytest.mark.parametrize("height,width", [(336, 336), (448, 448), (224, 448)])
@torch.no_grad()
def test_interpolated_position_embeddings_equal_transformers(b32, b32_ref, height, width):
    px = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(3))
    ours = b32.encode_image(px, interpolate_pos_encoding=True)
    theirs = b32_ref.get_image_features(pixel_values=px, interpolate_pos_encoding=True).pooler_output
    assert_close(ours, theirs, **TOL, what=f"image embeds at {height}x{width}")


@torch.no_grad()
def test_asking_for_attention_maps_does_not_change_the_embeddings(tiny):
    px, ids = pixels(2, 32), token_batch([3, 9])
    assert_close(tiny.encode_image(px, output_attentions=True).embeds, tiny.encode_image(px), **TOL, what="image")
    assert_close(tiny.encode_text(ids, output_attentions=True).embeds, tiny.encode_text(ids), **TOL, what="text")


def test_the_fused_path_runs_unless_attention_maps_are_asked_for(tiny, monkeypatch):
    calls, fused = [], torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *args, **kwargs: calls.append(1) or fused(*args, **kwargs))
    with torch.no_grad():
        tiny(pixels(1, 32), token_batch([4]))
        assert len(calls) == 4  # 2 image blocks + 2 text blocks
        tiny.encode_image(pixels(1, 32), output_attentions=True)  # the probabilities: the formula written out
        assert len(calls) == 4
        tiny.encode_image(pixels(1, 32), output_hidden_states=True)  # hidden states alone keep the fused path
        assert len(calls) == 6


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("qk_norm", [False, True])
@torch.no_grad()
def test_the_fused_and_the_written_out_attention_agree(causal, qk_norm):
    # Attention.forward computes softmax(q k^T / sqrt(hs)) v twice over, side by side: the fused kernel, and
    # the formula when the probabilities are asked for. Same outputs; probabilities that sum to one and,
    # causal, give no weight to later positions.
    torch.manual_seed(0)
    attn = model_module.Attention(48, heads=4, qk_norm=qk_norm)
    x = torch.randn(3, 11, 48)
    fused, none = attn(x, causal)
    written_out, probs = attn(x, causal, need_weights=True)
    assert none is None and probs.shape == (3, 4, 11, 11)
    assert_close(written_out, fused, **TOL, what=f"written-out vs fused attention, causal={causal}")
    assert_close(probs.sum(-1), torch.ones(3, 4, 11), atol=1e-6, rtol=0, what="rows sum to 1")
    assert bool((probs.triu(1) == 0).all()) == causal


def test_forward_hooks_see_the_documented_modules(tiny):
    seen = {}
    names = dict(tiny.named_modules())
    for name in ("visual.blocks.1.attn", "visual.blocks.1.mlp", "visual.blocks.1.mlp.act", "text.blocks.0",
                 "text.ln_final", "visual.proj"):
        names[name].register_forward_hook(lambda m, args, out, name=name: seen.setdefault(name, out))
    try:
        with torch.no_grad():
            out = tiny.encode_image(pixels(1, 32), output_hidden_states=True)
            tiny.encode_text(token_batch([4]))
    finally:
        for module in tiny.modules():
            module._forward_hooks.clear()
    attn_out, probs = seen["visual.blocks.1.attn"]  # Attention returns (output, probabilities or None)
    assert attn_out.shape == (1, 17, 48) and probs is None
    assert seen["visual.blocks.1.mlp"].shape == (1, 17, 48)
    assert seen["visual.blocks.1.mlp.act"].shape == (1, 17, 96)  # the post-activation neurons
    assert torch.equal(seen["visual.proj"], out.embeds)
    assert seen["text.ln_final"].shape[-1] == 32


# -----------------------------------------------------------------------------
# Relevance map


def test_window_starts_cover_every_pixel():
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]  # the last window ends flush with the edge
    assert window_starts(5, 8, 4) == [0]
    for height, width in [(37, 53), (224, 224), (9, 300)]:
        covered = torch.zeros(height, width, dtype=torch.bool)
        for top, left, side in windows(height, width):
            assert top + side <= height and left + side <= width
            covered[top:top + side, left:left + side] = True
        assert covered.all()


def test_relevance_map_peaks_where_the_text_is(tiny, monkeypatch):
    # The image encoder replaced by a function of each window's mean colour, and a text embedding that
    # prefers red: windows over the red half score highest, so the map peaks in the left half.
    mean = torch.tensor(miniclip.relevance.OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(miniclip.relevance.OPENAI_CLIP_STD).view(1, 3, 1, 1)

    def mean_colour(px, **kwargs):
        rgb = (px * std + mean).mean(dim=(2, 3))  # (B, 3) in [0, 1]
        return torch.cat([rgb, torch.zeros(px.size(0), 13)], dim=1)  # padded to embed_dim 16

    monkeypatch.setattr(tiny, "encode_image", mean_colour)
    red = torch.zeros(16)
    red[0] = 1.0
    image = Image.new("RGB", (120, 80), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 60, 80))
    heat = miniclip.relevance_map(tiny, image, red)
    assert heat.shape == (80, 120)
    assert heat[:, :60].mean() > heat[:, 60:].mean()
    peak = heat.flatten().argmax().item()
    assert peak % 120 < 60  # the peak's column is in the left half
    # by hand: a window entirely inside the red half has colour (1, 0, 0), cosine 1 with `red`; entirely
    # blue gives 0. The far-left column is covered by red-only small windows and by mixed large ones.
    assert heat[:, 0].max() <= 1 + 1e-6 and heat[:, -1].min() >= -1e-6
