"""On a CUDA GPU: low-precision parity with transformers, CPU-vs-GPU agreement, and the GPU paths of the
library's jobs (every encoder path, relevance_map, miniclip.load + preprocess, the command line).

Every test is marked `cuda`, and the module is skipped where torch sees no CUDA device. Run them on a GPU
machine: `pytest -m cuda tests/test_cuda.py`.

Numerics. TF32 is turned off (matmul, and cuDNN: the patch embedding is a convolution), and so are cuBLAS's
reduced-precision reductions for float16/bfloat16, so that every product accumulates in float32, as the
tolerances of tests/test_precision.py assume; its docstring derives them: eps * sqrt(depth) on
|unit(a) - unit(b)|, the distance between two unit-normalised embeddings.

- float16/bfloat16 vs float32, both on the GPU: eps * sqrt(L), as on the CPU (logits: test_precision's).
- miniclip vs transformers' CLIPModel, both in float16/bfloat16 on the GPU: 2 * eps * sqrt(L). Each is
  within eps * sqrt(L) of the float32 result, so they are within twice that of each other (the triangle
  inequality); the logits likewise with twice test_precision's logit tolerance.
- float32 on the GPU vs float32 on the CPU: 1e-5 on |unit(a) - unit(b)|. A float32 forward pass is off from
  float64 by ~1e-6 (ViT-B/32 on the CPU: 0.6e-6 image, 1.1e-6 text), so two of them differ by ~2e-6; 1e-5
  leaves room for the GPU kernels' other summation orders, and is 300x below what TF32 would cost (its eps,
  2**-10, times sqrt(12): 3e-3), so TF32 left on fails it. Logits: 2e-5 in units of logit_scale.exp().
- Values of a tiny model's intermediates (hidden states, attention, patch tokens), GPU vs CPU in float32:
  atol 1e-5, rtol 1e-5, the model tests' tolerance.
"""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from compare import assert_close
from PIL import Image
from test_cli import classify_rows
from test_precision import TEXTS, Outputs, assert_logits_within, assert_within, inputs, run, tolerances

import miniclip
from miniclip import CLIP
from miniclip.cli import main

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (torch.cuda.is_available() is False); run on a GPU machine: "
                              "pytest -m cuda tests/test_cuda.py"),
]

CUDA = "cuda"
LOW_PRECISION = [pytest.param(torch.float16, id="float16"), pytest.param(torch.bfloat16, id="bfloat16")]
FP32_DEVICE_TOL = 1e-5  # |unit(gpu) - unit(cpu)|, float32
FP32_LOGIT_TOL = 2 * FP32_DEVICE_TOL  # |cos(a, t) - cos(a', t')| <= |a - a'| + |t - t'|
VALUE_TOL = dict(atol=1e-5, rtol=1e-5)
PRINTED = 1e-4  # the command line prints probabilities to 4 decimals


@pytest.fixture(scope="module", autouse=True)
def float32_accumulation():
    """No TF32, no reduced-precision reductions: every product accumulates in float32 (restored after)."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32, matmul.allow_fp16_reduced_precision_reduction,
             matmul.allow_bf16_reduced_precision_reduction)
    matmul.allow_tf32 = False
    cudnn.allow_tf32 = False
    matmul.allow_fp16_reduced_precision_reduction = False
    matmul.allow_bf16_reduced_precision_reduction = False
    yield
    (matmul.allow_tf32, cudnn.allow_tf32, matmul.allow_fp16_reduced_precision_reduction,
     matmul.allow_bf16_reduced_precision_reduction) = saved


def skip_if_unsupported(dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")


def on_cuda(model) -> bool:
    return all(t.device.type == "cuda" for t in model.state_dict().values())


@torch.no_grad()
def run_transformers(ref) -> Outputs:
    """test_precision.run for transformers' CLIPModel: the same inputs, on its device and in its dtype."""
    px, ids = inputs(ref.config.vision_config.image_size)
    px, ids = px.to(ref.device, ref.dtype), ids.to(ref.device)
    image = F.normalize(ref.get_image_features(pixel_values=px).pooler_output.float(), dim=-1).cpu()
    text = F.normalize(ref.get_text_features(input_ids=ids).pooler_output.float(), dim=-1).cpu()
    logits = ref(input_ids=ids, pixel_values=px).logits_per_image.float().cpu()
    return Outputs(image, text, logits, ref.logit_scale.float().exp().item(), None)


def make_photo(path: Path, size=(64, 48), seed: int = 0) -> Path:
    """A smooth random RGB image (a coarse noise grid, upsampled, with a little grain)."""
    g = torch.Generator().manual_seed(seed)
    width, height = size
    blobs = F.interpolate(torch.rand(1, 3, 4, 5, generator=g), size=(height, width), mode="bicubic")[0]
    pixels = ((blobs + 0.03 * torch.randn(3, height, width, generator=g)).clamp(0, 1) * 255).round()
    image = Image.fromarray(pixels.to(torch.uint8).permute(1, 2, 0).contiguous().numpy(), "RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


# -----------------------------------------------------------------------------
# Numbers


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_matches_float32_and_transformers_on_cuda(b32_dir, b32_ref, dtype):
    skip_if_unsupported(dtype)
    model = CLIP.from_pretrained(b32_dir, device=CUDA, dtype=dtype)
    assert model.dtype == dtype and model.device.type == "cuda" and on_cuda(model)
    ours = run(model)
    full = run(CLIP.from_pretrained(b32_dir, device=CUDA))
    theirs = run_transformers(copy.deepcopy(b32_ref).to(CUDA, dtype))  # the shared reference stays as it is
    image_tol, text_tol, logit_tol = tolerances(model.config, dtype)
    assert_within(ours.image, full.image, image_tol, f"{dtype} image embeddings vs float32, on cuda")
    assert_within(ours.text, full.text, text_tol, f"{dtype} text embeddings vs float32, on cuda")
    assert_logits_within(ours, full, logit_tol, f"{dtype} logits vs float32, on cuda")
    assert_within(ours.image, theirs.image, 2 * image_tol, f"{dtype} image embeddings vs transformers', on cuda")
    assert_within(ours.text, theirs.text, 2 * text_tol, f"{dtype} text embeddings vs transformers', on cuda")
    assert_logits_within(ours, theirs, 2 * logit_tol, f"{dtype} logits vs transformers', on cuda")


def test_cpu_and_cuda_agree_in_float32(b32, b32_dir):
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    model = CLIP.from_pretrained(b32_dir, device=CUDA)
    assert model.dtype == torch.float32 and on_cuda(model)
    gpu, cpu = run(model), run(b32)
    assert_within(gpu.image, cpu.image, FP32_DEVICE_TOL, "image embeddings, cuda vs cpu")
    assert_within(gpu.text, cpu.text, FP32_DEVICE_TOL, "text embeddings, cuda vs cpu")
    assert_logits_within(gpu, cpu, FP32_LOGIT_TOL, "logits, cuda vs cpu")


@torch.no_grad()
def test_every_encoder_path_runs_on_cuda(tiny, tiny_dir):
    # Each path builds tensors of its own (positions, masks, pooling indices): one made on the CPU would not
    # mix with the model's. The tiny model on the GPU against the same model on the CPU.
    model = CLIP.from_pretrained(tiny_dir, device=CUDA)
    size = model.config.vision.image_size
    g = torch.Generator().manual_seed(0)
    px, big = torch.randn(2, 3, size, size, generator=g), torch.randn(1, 3, 2 * size, 2 * size, generator=g)
    ids = torch.cat([miniclip.tokenize(TEXTS), miniclip.tokenize(["a photo<|endoftext|> of a cat"])])
    calls = {
        "encode_image": lambda m, d: m.encode_image(px.to(d)),
        "encode_image interpolate_pos_encoding": lambda m, d: m.encode_image(big.to(d), interpolate_pos_encoding=True),
        "encode_image_patches": lambda m, d: m.encode_image_patches(px.to(d)),
        "encode_text": lambda m, d: m.encode_text(ids.to(d)),
        "encode_text_tokens clip_skip=1": lambda m, d: m.encode_text_tokens(ids.to(d), clip_skip=1),
        "model.tokenize": lambda m, d: m.encode_text(m.tokenize(TEXTS)),
    }
    for what, call in calls.items():
        assert_close(call(model, CUDA).cpu(), call(tiny, "cpu"), **VALUE_TOL, what=f"{what}, cuda vs cpu")
    for what, x, encode in [("image", px, CLIP.encode_image), ("text", ids, CLIP.encode_text)]:
        gpu = encode(model, x.to(CUDA), output_hidden_states=True, output_attentions=True)
        cpu = encode(tiny, x, output_hidden_states=True, output_attentions=True)
        for field in ("embeds", "last_hidden_state"):
            assert_close(getattr(gpu, field).cpu(), getattr(cpu, field), **VALUE_TOL, what=f"{what} {field}")
        for i, (a, b) in enumerate(zip(gpu.hidden_states, cpu.hidden_states, strict=True)):
            assert_close(a.cpu(), b, **VALUE_TOL, what=f"{what} hidden_states[{i}]")
        for i, (a, b) in enumerate(zip(gpu.attentions, cpu.attentions, strict=True)):
            assert_close(a.cpu(), b, **VALUE_TOL, what=f"{what} attentions[{i}]")
    logits, _ = model(px.to(CUDA), ids.to(CUDA))
    assert_close(logits.cpu(), tiny(px, ids)[0], atol=1e-4, rtol=1e-5, what="forward, cuda vs cpu")


# -----------------------------------------------------------------------------
# Jobs


def smooth_image(width: int, height: int, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    blobs = F.interpolate(torch.rand(1, 3, 4, 5, generator=g), size=(height, width), mode="bicubic")[0]
    pixels = ((blobs + 0.03 * torch.randn(3, height, width, generator=g)).clamp(0, 1) * 255).round()
    return Image.fromarray(pixels.to(torch.uint8).permute(1, 2, 0).contiguous().numpy(), "RGB")


def test_relevance_map_runs_on_cuda(tiny, tiny_dir):
    image, text = smooth_image(60, 40), "a photo of a cat"
    model = CLIP.from_pretrained(tiny_dir, device=CUDA)
    on_gpu = miniclip.relevance_map(model, image, text, batch_size=5).cpu()
    assert on_gpu.shape == (40, 60) and on_gpu.dtype == torch.float32
    # a relevance map is a mean of cosines: float32 on either device gives the same to summation order
    assert_close(on_gpu, miniclip.relevance_map(tiny, image, text, batch_size=5), atol=FP32_DEVICE_TOL, rtol=0,
                 what="relevance map, cuda vs cpu")
    # a text embedding made on the GPU is taken as it is
    with torch.no_grad():
        embedding = model.encode_text(model.tokenize([text]))
    assert_close(miniclip.relevance_map(model, image, embedding, batch_size=5).cpu(), on_gpu, atol=FP32_DEVICE_TOL,
                 rtol=0, what="relevance map from a cuda text embedding")
    # and in float16: each cosine moves by at most |d image| + |d text| (unit vectors), within the tolerances
    half = CLIP.from_pretrained(tiny_dir, device=CUDA, dtype=torch.float16)
    image_tol, text_tol, _ = tolerances(half.config, torch.float16)
    assert_close(miniclip.relevance_map(half, image, text, batch_size=5).cpu(), on_gpu, atol=image_tol + text_tol, rtol=0,
                 what="float16 relevance map on cuda vs float32")


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="float32"), *LOW_PRECISION])
@torch.no_grad()
def test_load_preprocess_and_encode_on_cuda(b32_dir, tmp_path, dtype):
    skip_if_unsupported(dtype)
    photos = [make_photo(tmp_path / f"photo{i}.png", seed=i) for i in range(2)]
    model, preprocess = miniclip.load(b32_dir, device=CUDA, dtype=dtype)
    assert model.device.type == "cuda" and model.dtype == dtype and on_cuda(model)
    pixels = preprocess(photos)  # float32 on the CPU, as documented; moved by the caller
    assert pixels.device.type == "cpu" and pixels.dtype == torch.float32
    pixels, ids = pixels.to(model.device, model.dtype), model.tokenize(TEXTS)
    assert ids.device == model.device
    image = F.normalize(model.encode_image(pixels).float(), dim=-1).cpu()
    text = F.normalize(model.encode_text(ids).float(), dim=-1).cpu()
    logits, _ = model(pixels, ids)

    cpu_model, cpu_preprocess = miniclip.load(b32_dir)
    cpu_pixels = cpu_preprocess(photos)
    assert torch.equal(cpu_pixels, preprocess(photos))
    cpu_image = F.normalize(cpu_model.encode_image(cpu_pixels), dim=-1)
    cpu_text = F.normalize(cpu_model.encode_text(miniclip.tokenize(TEXTS)), dim=-1)
    if dtype == torch.float32:
        image_tol = text_tol = FP32_DEVICE_TOL
        logit_tol = FP32_LOGIT_TOL
    else:
        image_tol, text_tol, logit_tol = tolerances(model.config, dtype)
    assert_within(image, cpu_image, image_tol, f"{dtype} image embeddings on cuda vs float32 on cpu")
    assert_within(text, cpu_text, text_tol, f"{dtype} text embeddings on cuda vs float32 on cpu")
    expected = cpu_model.logit_scale.exp() * cpu_image @ cpu_text.t()
    err = (logits.float().cpu() - expected).abs().max().item() / cpu_model.logit_scale.exp().item()
    assert err <= logit_tol, f"{dtype} logits on cuda vs float32 on cpu: {err:.3g} > {logit_tol:.3g}"


def classify(capsys, argv) -> dict[str, dict[str, float]]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert status == 0, f"miniclip {' '.join(map(str, argv))} exited with {status}:\n{err}"
    return classify_rows(out)


def assert_same_probabilities(got, expected, tol, what):
    assert got.keys() == expected.keys(), what
    for image in expected:
        assert got[image].keys() == expected[image].keys(), what
        for label, p in expected[image].items():
            assert abs(got[image][label] - p) <= tol, f"{what}: {image}, {label}: {got[image][label]} vs {p}"


def test_cli_classify_on_cuda(tiny, tiny_dir, tmp_path, capsys):
    photos = [make_photo(tmp_path / f"photo{i}.png", size=(64 + 8 * i, 48), seed=i) for i in range(3)]
    argv = ["classify", *photos, "--label", "cat", "--label", "dog", "--label", "a red car", "--model", tiny_dir]
    cache = tmp_path / "cache"
    cpu = classify(capsys, [*argv, "--no-cache"])
    assert set(cpu) == {str(p) for p in photos}
    gpu = classify(capsys, [*argv, "--device", "cuda", "--cache-dir", cache])
    # float32 on both: the same probabilities to the printed digit (one rounding step either way)
    assert_same_probabilities(gpu, cpu, 2 * PRINTED, "classify --device cuda vs cpu")
    again = classify(capsys, [*argv, "--device", "cuda", "--cache-dir", cache])  # the embeddings from the cache
    assert_same_probabilities(again, gpu, 2 * PRINTED, "classify --device cuda, from the cache")
    # float16 on the GPU: softmax moves no probability by more than half the largest change of a logit, and
    # the logits move by at most logit_scale.exp() * logit tolerance (tests/test_precision.py)
    half = classify(capsys, [*argv, "--device", "cuda:0", "--dtype", "float16", "--no-cache"])
    _, _, logit_tol = tolerances(tiny.config, torch.float16)
    scale = tiny.logit_scale.exp().item()
    assert_same_probabilities(half, cpu, scale * logit_tol / 2 + 2 * PRINTED, "classify --dtype float16 on cuda")
