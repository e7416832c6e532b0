"""Half precision against full precision, with tolerances derived from the dtype, and proof that they bite.

The ViT-B/32 test checkpoint (random weights at the released sizes) is loaded three times on the CPU, in
float32, float16 and bfloat16 (`CLIP.from_pretrained(path, dtype=...)`), and the low-precision models'
unit-normalised image and text embeddings and logits are compared with the float32 model's.

The measure: for each row, |unit(low) - unit(fp32)|, the Euclidean distance between the two unit
embeddings (about the angle between them, in radians). It is what every use of CLIP embeddings reads
(cosine similarities, nearest neighbours), and unlike a per-element tolerance it does not shrink with the
embedding width: a 512-wide unit vector has elements of about 0.04, so a per-element atol of 5e-3 (the
transformers convention, which the tolerances below otherwise match) lets a 1% error through.

The tolerance, derived from the dtype's machine epsilon (torch.finfo(dtype).eps: 2**-10 for float16, 2**-7
for bfloat16) and the tower's depth L:

    tol = eps * sqrt(L)

Each of the L residual blocks computes its branch in the low precision and adds it to the residual stream,
which is rounded there again: an error of about eps relative to the stream per block. The errors of
different blocks are independent, so they add in quadrature, and LayerNorm rescales whatever grows with the
stream, so that after L blocks the relative (angular) error of the final token is ~ eps * sqrt(L). This
counts the roundings of the stored values only: it assumes the matrix products and reductions accumulate in
float32, as the CPU kernels do and cuBLAS does with its reduced-precision reductions turned off
(tests/test_cuda.py turns them off). For ViT-B/32 (12 layers in both towers):

    float16:  9.77e-4 * sqrt(12) = 3.4e-3      (transformers' tests: 5e-3)
    bfloat16: 7.81e-3 * sqrt(12) = 2.7e-2      (transformers' tests: 3e-2 on a GPU)

Measured here (2 images, 2 texts): float16 is off by 1.2e-3 to 1.4e-3 (0.4 tol), bfloat16 by 0.9e-2 to
1.2e-2 (0.4 tol). (float32 itself is off from float64 by 0.6e-6 to 1.1e-6, 1.4 to 2.7 times its own
eps * sqrt(12): there the accumulation is in float32 too, and its error grows with the width as well.)

The logits, 100 * cosine, are compared in units of the float32 model's logit_scale.exp() (100: the size a
logit has at cosine 1). By Cauchy-Schwarz, |cos(a, t) - cos(a', t')| <= |a - a'| + |t - t'| for unit
vectors, so the cosines may differ by tol_image + tol_text; the low-precision model also stores logit_scale
(ln 100 = 4.6) rounded, which changes exp() by up to 4.6 * eps / 2 relatively, and rounds the product once
(eps / 2; eps counted to be safe). Hence LOGIT tol = tol_image + tol_text + (4.6 / 2 + 1) * eps.

The negative test: exact GELU in place of OpenAI's quick_gelu, the same weights otherwise, moves the float32
embeddings by 0.6% (image) and 1.1% (text); a float16 model with that activation fails the float16
tolerance against the right float32 model (and the right float16 model fails it against the wrong one).
So the tolerance is tight enough to catch an error at that level, which the old "5% of the largest value"
bound was not. bfloat16's tolerance (2.7e-2) is above such an error by design:
bfloat16's own rounding is as large, so no bfloat16 comparison can tell the two activations apart.
"""

import dataclasses
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import miniclip
from miniclip import CLIP

LOW_PRECISION = [torch.float16, torch.bfloat16]
TEXTS = ["a photo of a cat", "a diagram of the transformer architecture"]
N_IMAGES = 2  # small batches: float16 matmuls on a CPU are slower than float32 ones


def embedding_tolerance(dtype: torch.dtype, layers: int) -> float:
    """The largest |unit(low) - unit(fp32)| allowed for a tower of `layers` blocks run in `dtype`."""
    return torch.finfo(dtype).eps * math.sqrt(layers)


def logit_tolerance(dtype: torch.dtype, vision_layers: int, text_layers: int, log_scale: float = math.log(100)) -> float:
    """The largest |logits(low) - logits(fp32)| / logit_scale.exp() allowed (see the module docstring)."""
    eps = torch.finfo(dtype).eps
    return embedding_tolerance(dtype, vision_layers) + embedding_tolerance(dtype, text_layers) \
        + (abs(log_scale) / 2 + 1) * eps


# The values for ViT-B/32 (12 + 12 layers), stated; test_tolerances_are_the_stated_values checks the formula.
FP16_EMBED_TOL = 3.4e-3
BF16_EMBED_TOL = 2.7e-2
FP16_LOGIT_TOL = 1.0e-2
BF16_LOGIT_TOL = 8.0e-2


@dataclass
class Outputs:
    image: torch.Tensor  # (N_IMAGES, D) unit-normalised, float32
    text: torch.Tensor  # (len(TEXTS), D) unit-normalised, float32
    logits: torch.Tensor  # (N_IMAGES, len(TEXTS)) logits_per_image from forward(), float32
    logit_scale: float  # the model's logit_scale.exp()
    config: miniclip.CLIPConfig


def inputs(image_size: int):
    g = torch.Generator().manual_seed(0)
    return torch.randn(N_IMAGES, 3, image_size, image_size, generator=g), miniclip.tokenize(TEXTS)


@torch.no_grad()
def run(model: CLIP) -> Outputs:
    """The model's outputs on `inputs`, on its device and in its dtype; returned in float32 on the CPU."""
    px, ids = inputs(model.config.vision.image_size)
    px, ids = px.to(model.device, model.dtype), ids.to(model.device)
    image = F.normalize(model.encode_image(px).float(), dim=-1).cpu()
    text = F.normalize(model.encode_text(ids).float(), dim=-1).cpu()
    logits, _ = model(px, ids)
    return Outputs(image, text, logits.float().cpu(), model.logit_scale.float().exp().item(), model.config)


def with_activation(config, activation: str):
    return dataclasses.replace(config, vision=dataclasses.replace(config.vision, activation=activation),
                               text=dataclasses.replace(config.text, activation=activation))


@pytest.fixture(scope="module")
def outputs(b32_dir):
    """outputs(dtype, activation=None) -> Outputs of the B/32 test checkpoint loaded in `dtype`, with its own
    activation or, given one, with `activation` instead (the same weights); each computed once."""
    done = {}

    def get(dtype, activation=None):
        if (dtype, activation) not in done:
            config = None if activation is None else with_activation(get(torch.float32).config, activation)
            model = CLIP.from_pretrained(b32_dir, dtype=dtype, config=config)
            assert model.dtype == dtype
            assert activation is None or model.config.vision.activation == model.config.text.activation == activation
            done[dtype, activation] = run(model)
            del model
        return done[dtype, activation]

    return get


def unit_distance(ours: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per row, |ours - reference| of two unit-normalised embeddings."""
    return (ours - reference).norm(dim=-1)


def assert_within(ours: torch.Tensor, reference: torch.Tensor, tol: float, what: str):
    err = unit_distance(ours, reference)
    assert err.max().item() <= tol, (
        f"{what}: |unit(ours) - unit(reference)| per row = {[f'{e:.3g}' for e in err.tolist()]}, "
        f"over the tolerance {tol:.3g}")


def assert_logits_within(ours: Outputs, reference: Outputs, tol: float, what: str):
    err = (ours.logits - reference.logits).abs().max().item() / reference.logit_scale
    assert err <= tol, f"{what}: max |logits - reference| / logit_scale = {err:.3g}, over the tolerance {tol:.3g}"


def tolerances(config, dtype):
    return (embedding_tolerance(dtype, config.vision.layers), embedding_tolerance(dtype, config.text.layers),
            logit_tolerance(dtype, config.vision.layers, config.text.layers))


def test_tolerances_are_the_stated_values():
    b32 = miniclip.PRESETS["ViT-B/32"]
    assert b32.vision.layers == b32.text.layers == 12
    for dtype, embed, logit in [(torch.float16, FP16_EMBED_TOL, FP16_LOGIT_TOL),
                                (torch.bfloat16, BF16_EMBED_TOL, BF16_LOGIT_TOL)]:
        image_tol, text_tol, logit_tol = tolerances(b32, dtype)
        assert image_tol == text_tol == pytest.approx(embed, rel=0.02)
        assert logit_tol == pytest.approx(logit, rel=0.05)
    # eps * sqrt(12) lands on the transformers convention (5e-3 for float16, 3e-2 for bfloat16), a bit inside it
    assert FP16_EMBED_TOL < 5e-3 and BF16_EMBED_TOL < 3e-2


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_low_precision_matches_float32(outputs, dtype):
    low, full = outputs(dtype), outputs(torch.float32)
    image_tol, text_tol, logit_tol = tolerances(full.config, dtype)
    assert_within(low.image, full.image, image_tol, f"{dtype} image embeddings vs float32")
    assert_within(low.text, full.text, text_tol, f"{dtype} text embeddings vs float32")
    assert_logits_within(low, full, logit_tol, f"{dtype} logits vs float32")
    # and the low-precision model did compute in its own dtype: its results are not the float32 ones
    assert unit_distance(low.image, full.image).min() > 0 and unit_distance(low.text, full.text).min() > 0


def test_float16_tolerance_catches_the_wrong_activation(outputs):
    # The mutant: the same weights with exact GELU instead of quick_gelu. In float32 it is off by ~0.6%
    # (image) and ~1.1% (text), more than float16's tolerance...
    fp32, gelu = outputs(torch.float32), outputs(torch.float32, "gelu")
    image_tol, text_tol, _ = tolerances(fp32.config, torch.float16)
    assert unit_distance(gelu.image, fp32.image).min() > image_tol
    assert unit_distance(gelu.text, fp32.text).min() > text_tol
    # ...so with the very check the positive test makes, a float16 model with the wrong activation fails
    # against the right float32 model, and the right float16 model fails against the wrong float32 one:
    # the tolerance tells a 0.6% error from float16's rounding.
    for low, full, what in [(outputs(torch.float16, "gelu"), fp32, "float16 exact-GELU model vs float32"),
                            (outputs(torch.float16), gelu, "float16 model vs float32 exact-GELU model")]:
        with pytest.raises(AssertionError, match="over the tolerance"):
            assert_within(low.image, full.image, image_tol, f"{what}: image embeddings")
        with pytest.raises(AssertionError, match="over the tolerance"):
            assert_within(low.text, full.text, text_tol, f"{what}: text embeddings")
