"""The text embedding is read at the FIRST end-of-text token: rows that hold two of them.

A row from `tokenize` has one <|endoftext|> (49407), so "the first one", "the last one" and "the largest
id" are the same position, and a model pooling at the wrong one passes every test fed such rows. These rows
hold two or more: the literal "<|endoftext|>" inside a text (the tokenizer maps it to 49407, as OpenAI's
does), rows padded with <|endoftext|> (as transformers' tokenizer pads when pad_token is <|endoftext|>), and
hand-built ids with other tokens between the two.

What the embedding must be, three ways:
- transformers' CLIPModel.get_text_features on the same ids and weights. Its rule (modeling_clip.py,
  CLIPTextTransformer): with the legacy eos_token_id == 2, which the openai repositories' configs still say
  (and so the test checkpoints), it reads the position of `input_ids.argmax(-1)`, the largest id, whose
  first occurrence is the first 49407; with any other eos_token_id it reads the first position holding it.
  Both rules are checked. Tolerance: 1e-5 (atol and rtol), the model tests' float32 embedding tolerance.
- OpenAI's clip/model.py (tests/oracles.py), which reads `text.argmax(dim=-1)`: the first 49407 again,
  with its own random weights written in OpenAI's layout. Tolerance: 1e-5 on unit-normalised embeddings, as
  tests/test_formats.py.
- By hand: attention is causal, so the token at the first end-of-text token sees nothing after it. Changing,
  padding or cutting off everything after it cannot change the embedding, up to float32 summation order
  (1e-6 on unit-normalised embeddings; measured: 0 for each row alone, 7e-8 in a batch).
And what it must not be: the embedding read at the last end-of-text token (transformers' final hidden
states at that position, through its text projection), which differs by far more than any tolerance.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from checkpoints import TINY, hf_config
from compare import assert_close
from oracles import openai_model_module
from safetensors.torch import save_file

import miniclip
from miniclip import CLIP

SOT, EOT = 49406, 49407
CONTEXT, VOCAB = 77, 49408
EMBED_TOL = dict(atol=1e-5, rtol=1e-5)
UNIT_TOL = dict(atol=1e-5, rtol=0)
SUFFIX_TOL = dict(atol=1e-6, rtol=0)  # unit-normalised: float32 summation order only
DIFFERENT = 0.05  # |unit(first) - unit(last)| must exceed this for every row: 5000x the tolerance

TEXTS = [
    "a photo<|endoftext|> of a cat",  # 49407 inside the text, then the closing one
    "a dog<|endoftext|>",  # two in a row
    "<|endoftext|>",  # the first one straight after <|startoftext|>
]


def hand_built_rows() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    rows = torch.zeros(3, CONTEXT, dtype=torch.long)
    rows[:, 0] = SOT
    # words, EOT, more words, EOT, zero padding
    rows[0, 1:9] = torch.tensor([320, 1125, 539, EOT, 320, 2368, 1929, EOT])
    # padded with EOT to the end, as transformers' tokenizer pads (pad_token "<|endoftext|>")
    rows[1, 1:4] = torch.tensor([320, 1929, EOT])
    rows[1, 4:] = EOT
    # random ids between the first EOT and a second one in the last position
    rows[2, 1:6] = torch.randint(1, SOT, (5,), generator=g)
    rows[2, 6] = EOT
    rows[2, 7:76] = torch.randint(1, SOT, (69,), generator=g)
    rows[2, 76] = EOT
    return rows


def two_eot_rows() -> torch.Tensor:
    ids = torch.cat([miniclip.tokenize(TEXTS), hand_built_rows()])
    assert ((ids == EOT).sum(-1) >= 2).all()
    return ids


def first_eot(ids: torch.Tensor) -> torch.Tensor:
    return (ids == EOT).int().argmax(-1)


def last_eot(ids: torch.Tensor) -> torch.Tensor:
    return ids.size(1) - 1 - (ids.flip(-1) == EOT).int().argmax(-1)


def test_the_rows_hold_two_end_of_text_tokens_at_different_places():
    ids = two_eot_rows()
    assert (first_eot(ids) < last_eot(ids)).all()
    # the tokenizer maps the literal "<|endoftext|>" to 49407, exactly as OpenAI's does
    assert miniclip.tokenize(TEXTS)[:, :8].tolist() == [
        [SOT, 320, 1125, EOT, 539, 320, 2368, EOT],
        [SOT, 320, 1929, EOT, EOT, 0, 0, 0],
        [SOT, EOT, EOT, 0, 0, 0, 0, 0],
    ]
    from oracles import openai_tokenize

    assert torch.equal(miniclip.tokenize(TEXTS), openai_tokenize(TEXTS).long())


# -----------------------------------------------------------------------------
# transformers


def with_eos_token_id(ref, spec, eos_token_id):
    """transformers' CLIPModel with `ref`'s weights and a text config saying eos_token_id."""
    from transformers import CLIPModel

    model = CLIPModel(hf_config(spec, eos_token_id=eos_token_id)).eval()
    model.load_state_dict(ref.state_dict())
    return model


@torch.no_grad()
def transformers_text(ref, ids):
    return ref.get_text_features(input_ids=ids).pooler_output


@pytest.mark.parametrize("size,eos_token_id", [("tiny", 2), ("tiny", EOT), ("b32", 2)],
                         ids=["tiny-legacy-argmax", "tiny-first-eos", "b32-legacy-argmax"])
def test_rows_with_two_eots_match_transformers(request, size, eos_token_id):
    ref = request.getfixturevalue(f"{size}_ref")
    model = CLIP.from_pretrained(request.getfixturevalue(f"{size}_dir"))
    assert ref.config.text_config.eos_token_id == 2  # the test checkpoints keep the openai repositories' value
    if eos_token_id != 2:
        ref = with_eos_token_id(ref, TINY, eos_token_id)
    ids = two_eot_rows()
    with torch.no_grad():
        ours = model.encode_text(ids)
    assert_close(ours, transformers_text(ref, ids), **EMBED_TOL, what=f"two-EOT rows vs transformers ({size}, "
                                                                      f"eos_token_id={eos_token_id})")


@torch.no_grad()
def test_the_embedding_is_read_at_the_first_eot_not_the_last(tiny, tiny_ref):
    ids = two_eot_rows()
    rows = torch.arange(len(ids))
    hidden = tiny_ref.text_model(input_ids=ids).last_hidden_state  # after final_layer_norm
    at_first = tiny_ref.text_projection(hidden[rows, first_eot(ids)])
    at_last = tiny_ref.text_projection(hidden[rows, last_eot(ids)])
    ours = tiny.encode_text(ids)
    assert_close(ours, at_first, **EMBED_TOL, what="the embedding vs transformers' states at the first EOT")
    gap = (F.normalize(ours, dim=-1) - F.normalize(at_last, dim=-1)).norm(dim=-1)
    assert (gap > DIFFERENT).all(), f"reading at the last EOT would be within {gap.min():.3g} of ours"
    # the intermediates' path (which runs every position) reads the same token
    out = tiny.encode_text(ids, output_hidden_states=True)
    assert_close(out.embeds, ours, **EMBED_TOL, what="EncoderOutput.embeds vs encode_text")
    assert_close(out.last_hidden_state, hidden, **EMBED_TOL, what="last_hidden_state vs transformers'")


# -----------------------------------------------------------------------------
# OpenAI's model


@torch.no_grad()
def randomise(model, seed):
    """Every tensor random (LayerNorm scales near 1, biases small, matrices by their fan-in), logit_scale ln 100."""
    g = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        noise = torch.randn(t.shape, generator=g)
        if t.ndim == 1 and name.endswith(".weight"):
            t.copy_(1 + 0.1 * noise)
        elif t.ndim <= 1:
            t.copy_(0.02 * noise)
        else:
            t.copy_(noise * t[0].numel() ** -0.5)
    model.logit_scale.fill_(math.log(100))


@pytest.fixture(scope="module")
def openai_pair(tmp_path_factory):
    """OpenAI's model (clip/model.py) at a tiny size with random weights, and miniclip's loaded from them."""
    M = openai_model_module()
    torch.manual_seed(0)
    # embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size, context_length, vocab_size,
    # transformer_width, transformer_heads (width // 64, as OpenAI's build_model infers), transformer_layers
    oracle = M.CLIP(16, 32, 2, 64, 8, CONTEXT, VOCAB, 128, 2, 2).eval()
    randomise(oracle, seed=0)
    path = tmp_path_factory.mktemp("openai") / "openai.safetensors"
    save_file({k: v.contiguous() for k, v in oracle.state_dict().items()}, path)
    return oracle, CLIP.from_pretrained(path)


@torch.no_grad()
def test_rows_with_two_eots_match_openai(openai_pair):
    oracle, model = openai_pair
    ids = two_eot_rows()
    ours, theirs = F.normalize(model.encode_text(ids), dim=-1), F.normalize(oracle.encode_text(ids), dim=-1)
    assert_close(ours, theirs, **UNIT_TOL, what="two-EOT rows vs OpenAI's model")
    # and OpenAI's model does tell the two apart: the rows cut after their first EOT (padded with zeros)
    # give its same embeddings, the rows with their first EOT replaced by an ordinary token do not
    cut = ids.clone()
    for row, p in enumerate(first_eot(ids).tolist()):
        cut[row, p + 1:] = 0
    assert_close(F.normalize(oracle.encode_text(cut), dim=-1), theirs, **UNIT_TOL, what="OpenAI's, rows cut")
    assert_close(F.normalize(model.encode_text(cut), dim=-1), theirs, **UNIT_TOL, what="ours, rows cut")


# -----------------------------------------------------------------------------
# By hand: nothing after the first end-of-text token reaches the embedding


def same_prefix_rows(prefix, seed=0) -> list[torch.Tensor]:
    """Rows that share `prefix` (ending in its first EOT) and differ in everything after it."""
    g = torch.Generator().manual_seed(seed)
    n = len(prefix)
    rest = CONTEXT - n

    def row(tail):
        return torch.cat([torch.tensor(prefix), torch.as_tensor(tail, dtype=torch.long)])

    return [
        row(torch.zeros(rest)),  # as tokenize pads
        row(torch.full((rest,), EOT)),  # padded with EOT
        row(torch.randint(1, SOT, (rest,), generator=g)),  # ordinary tokens to the end, no second EOT
        row([*torch.randint(1, SOT, (rest - 1,), generator=g).tolist(), EOT]),  # a second EOT at the end
        row([SOT, 320, EOT, *[0] * (rest - 3)]),  # another whole text after it
        row([]),  # cut right after the first EOT: a shorter row
    ]


@pytest.mark.parametrize("prefix", [[SOT, 320, 1125, 539, EOT], [SOT, EOT]], ids=["words", "empty-text"])
@torch.no_grad()
def test_tokens_after_the_first_eot_do_not_change_the_embedding(tiny, prefix):
    rows = same_prefix_rows(prefix)
    alone = [F.normalize(tiny.encode_text(r[None]), dim=-1)[0] for r in rows]
    for i, embed in enumerate(alone[1:], 1):
        assert_close(embed, alone[0], **SUFFIX_TOL, what=f"row {i} (different tokens after the first EOT), alone")
    full = torch.stack(rows[:-1])  # the same-length ones as one batch, and through the intermediates' path
    for what, embeds in [("batched", tiny.encode_text(full)),
                         ("output_hidden_states", tiny.encode_text(full, output_hidden_states=True).embeds)]:
        embeds = F.normalize(embeds, dim=-1)
        for i, embed in enumerate(embeds):
            assert_close(embed, alone[0], **SUFFIX_TOL, what=f"row {i}, {what}")
    # ...while another text before the first EOT does change it: the test can see a difference
    other = torch.tensor([[SOT, 2368, 1929, EOT, *[0] * (CONTEXT - 4)]])
    assert (F.normalize(tiny.encode_text(other), dim=-1)[0] - alone[0]).norm() > DIFFERENT
