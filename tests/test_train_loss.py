"""The contrastive loss and its gradients: a worked 3x3 example, and transformers' CLIPModel(return_loss=True)
on the same ViT-B/32-sized weights and batch, every parameter's gradient compared."""

import math

import pytest
import torch
from compare import assert_close
from miniclip.weights import hf

from miniclip import tokenize
from miniclip.train import clip_loss, trim_padding

CAPTIONS = ["a photo of a cat", "two dogs playing in the snow on a sunny day", "a red car", "an empty street at night"]


def test_loss_of_a_3x3_example_by_hand():
    # images e1, e2, e3 and texts e1, e1, e3 (unit vectors, so cosine similarity = dot product), scale 1:
    #   logits_per_image = [[1, 1, 0],    image 1 matches texts 1 and 2
    #                       [0, 0, 0],    image 2 matches nothing
    #                       [0, 0, 1]]
    # image -> text, right answers on the diagonal: -log softmax([1,1,0])[0] = log(2e + 1) - 1,
    #   -log softmax([0,0,0])[1] = log 3,  -log softmax([0,0,1])[2] = log(e + 2) - 1
    # text -> image (columns): [1,0,0] label 0: log(e + 2) - 1;  [1,0,0] label 1: log(e + 2);  [0,0,1]: log(e + 2) - 1
    e = math.e
    image_to_text = (math.log(2 * e + 1) - 1 + math.log(3) + math.log(e + 2) - 1) / 3
    text_to_image = (3 * math.log(e + 2) - 2) / 3
    eye = torch.eye(3)
    images, texts = eye, eye[[0, 0, 2]]
    loss = clip_loss(5 * images, 0.5 * texts, logit_scale=torch.tensor(0.0))  # lengths don't matter: normalised
    assert loss.item() == pytest.approx((image_to_text + text_to_image) / 2, rel=1e-6)
    # logit_scale = ln 2 doubles every logit: row 1 of image -> text becomes log(2e^2 + 1) - 2, and so on
    doubled = clip_loss(images, texts, torch.tensor(math.log(2.0)))
    image_to_text = (math.log(2 * e**2 + 1) - 2 + math.log(3) + math.log(e**2 + 2) - 2) / 3
    text_to_image = (3 * math.log(e**2 + 2) - 4) / 3
    assert doubled.item() == pytest.approx((image_to_text + text_to_image) / 2, rel=1e-6)


def test_loss_is_fp32_under_autocast():
    torch.manual_seed(0)
    image, text = torch.randn(8, 16), torch.randn(8, 16)
    exact = clip_loss(image, text, torch.tensor(math.log(100)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = clip_loss(image.bfloat16(), text.bfloat16(), torch.tensor(math.log(100)))
    assert mixed.dtype == torch.float32
    # only the inputs' rounding to bf16 (8 bits) differs, not the loss's arithmetic
    assert mixed.item() == pytest.approx(exact.item(), rel=2e-2)


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """|ours - theirs| / |theirs| over the whole tensor (Frobenius norms); 0 when both are 0."""
    scale = theirs.double().norm().item()
    diff = (ours.double() - theirs.double()).norm().item()
    return diff / scale if scale else diff


@pytest.mark.slow
def test_loss_and_every_gradient_match_transformers_b32(b32, b32_ref):
    # fp32 on both sides; tolerance 1e-5 relative per parameter (the issue's), measured 6.9e-6 at most
    # (text_model.encoder.layers.11.self_attn.v_proj.bias). That is fp32's own limit on this input: against
    # a float64 run of transformers, transformers' fp32 gradients are off by up to 7.9e-6 and ours by 7.2e-6
    # (the biases of the text tower's last layer, sums over four pooled rows of a peaked softmax's gradient).
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(len(CAPTIONS), 3, 224, 224, generator=g)
    ids = tokenize(CAPTIONS)  # 77 positions, as transformers reads them
    theirs = b32_ref(input_ids=ids, pixel_values=pixels, return_loss=True).loss
    their_params = dict(b32_ref.named_parameters())
    their_grads = dict(zip(their_params, torch.autograd.grad(theirs, list(their_params.values()))))

    # ours as the Trainer computes it: captions cut after the last end-of-text token (the same numbers)
    short = trim_padding(ids, b32.config.text)
    assert short.shape[1] < ids.shape[1]
    ours = clip_loss(b32.encode_image(pixels), b32.encode_text(short), b32.logit_scale)
    our_params = dict(b32.named_parameters())
    our_grads = dict(zip(our_params, torch.autograd.grad(ours, list(our_params.values()))))

    assert_close(ours, theirs, atol=0, rtol=1e-5, what="loss")
    # our gradients in transformers' names and shapes, through the same table that converts the weights
    mapped = hf.plan(b32.config).from_miniclip(our_grads)
    assert mapped.keys() == their_grads.keys()
    # Keys' biases add the same q . b_k to every score of a query's row, which softmax ignores: their
    # gradient is zero, and both sides compute rounding noise (~1e-9 against the query biases' ~1e-3).
    # Checked to be that small, not compared.
    zero = [name for name in their_grads if name.endswith("k_proj.bias")]
    for name in zero:
        q_bias = their_grads[name.replace("k_proj", "q_proj")].norm()
        assert mapped[name].norm() < 1e-5 * q_bias and their_grads[name].norm() < 1e-5 * q_bias, name
    errors = {name: relative_error(mapped[name], their_grads[name]) for name in their_grads if name not in zero}
    assert len(errors) == len(their_grads) - 24  # 12 + 12 blocks
    worst = max(errors, key=errors.get)
    print(f"largest relative error: {worst} {errors[worst]:.2e}")
    assert errors[worst] <= 1e-5, f"{worst}: relative error {errors[worst]:.2e}"
    assert all(their_grads[name].norm() > 0 for name in errors)
