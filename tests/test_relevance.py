"""miniclip.relevance_map against the method computed the plain way, window by window.

Reference: each window cropped with Pillow, put through `miniclip.preprocess` as a photo of its own (CLIP's
preprocessing: bicubic, antialiased when shrinking), embedded alone with `encode_image`, and every pixel of
the map given the mean cosine of the windows over it, in a Python loop. Tolerance atol=1e-5: the same pixels
go in; only the batching of the encoder and the order of the sums differ (float32).

Also: what changed from the first implementation (float tensors resized by torch), reduced maps for big
photos, and the progress bar.
"""

import time

import pytest
import torch
import torch.nn.functional as F
from compare import assert_close, max_diff
from PIL import Image

import miniclip
from miniclip import relevance
from miniclip.image_processing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Preprocessor
from miniclip.relevance import map_size, window_bytes, windows


def smooth_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Colour blobs and a little grain: every window differs, as in a photo."""
    g = torch.Generator().manual_seed(seed)
    blobs = F.interpolate(torch.rand(1, 3, 4, 5, generator=g), size=(height, width), mode="bicubic")[0]
    grain = torch.randn(3, height, width, generator=g) * 0.03
    pixels = ((blobs + grain).clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy(), "RGB")


@torch.no_grad()
def window_by_window(model, image: Image.Image, text: str) -> torch.Tensor:
    """The reference: the (H, W) map, one window at a time, summed pixel by pixel."""
    size = model.config.vision.image_size
    text_embed = F.normalize(model.encode_text(model.tokenize([text], truncate=True)), dim=-1)
    total, count = torch.zeros(image.height, image.width), torch.zeros(image.height, image.width)
    for top, left, side in windows(image.height, image.width):
        crop = image.crop((left, top, left + side, top + side))
        embed = F.normalize(model.encode_image(miniclip.preprocess(crop, size=size)[None]), dim=-1)
        total[top:top + side, left:left + side] += (embed @ text_embed.t()).item()
        count[top:top + side, left:left + side] += 1
    return total / count


@pytest.mark.parametrize("width,height", [(70, 50), (45, 90)])  # windows shrunk and enlarged to the 32-pixel input
def test_map_equals_windows_embedded_one_by_one(tiny, width, height):
    image = smooth_photo(width, height)
    ours = miniclip.relevance_map(tiny, image, "a photo of a cat", batch_size=5)
    assert ours.shape == (height, width) and ours.dtype == torch.float32
    assert_close(ours, window_by_window(tiny, image, "a photo of a cat"), atol=1e-5, rtol=0,
                 what=f"relevance map of a {width}x{height} photo")


def test_a_path_and_an_image_give_the_same_map(tiny, tmp_path):
    image = smooth_photo(60, 40)
    image.save(tmp_path / "photo.png")
    assert torch.equal(miniclip.relevance_map(tiny, tmp_path / "photo.png", "a cat"),
                       miniclip.relevance_map(tiny, image, "a cat"))


def old_window_pixels(image: Image.Image, box, size: int) -> torch.Tensor:
    """The first implementation: the photo as floats in [0, 1], each window resized by torch (bicubic,
    antialiased when shrinking), normalised, no rounding to bytes."""
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    pixels = pixels.view(image.height, image.width, 3).permute(2, 0, 1).float() / 255
    top, left, side = box
    crop = pixels[:, top:top + side, left:left + side].unsqueeze(0)
    resized = F.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False, antialias=side > size)
    mean, std = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1), torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    return (resized[0].clamp(0, 1) - mean) / std


@pytest.mark.parametrize("width,height,size", [(70, 50, 32), (45, 90, 32), (410, 300, 224), (300, 300, 224)])
@pytest.mark.parametrize("rows_per_piece", [512, 7])
def test_window_bytes_are_preprocessing_of_the_crop_byte_for_byte(width, height, size, rows_per_piece, monkeypatch):
    # The row pass shared by a column band and run a few rows at a time (see band_windows) changes nothing:
    # CLIP's preprocessing of each window, cropped out as a photo of its own, gives the same bytes. Windows
    # both shrink and grow here; 7 rows at a time splits every band into pieces.
    monkeypatch.setattr(relevance, "ROWS_PER_PIECE", rows_per_piece)
    image = smooth_photo(width, height)
    boxes = windows(height, width)
    ours = window_bytes(image, boxes, size)
    reference = Preprocessor(size=size, crop_size=size)
    for box, got in zip(boxes, ours):
        top, left, side = box
        want = reference.read([image.crop((left, top, left + side, top + side))])
        assert got == want.numpy().tobytes(), box


def test_window_pixels_against_the_first_implementation():
    # Where every window shrinks, torch's antialiased bicubic is Pillow's filter; what is left is Pillow's
    # rounding to bytes: at most 1/255 before normalising, 1 / (255 * 0.2613) = 0.015 after (the smallest std).
    # (Windows smaller than the input differ by up to 4/255: torch's bicubic without antialiasing uses
    # a = -0.75 where Pillow, and so CLIP's preprocessing, uses a = -0.5. The new values are CLIP's.)
    image = smooth_photo(320, 240)
    processor = Preprocessor(size=32, crop_size=32)
    boxes = windows(image.height, image.width)
    for box, crop in zip(boxes, window_bytes(image, boxes, 32)):
        ours = processor.normalise(torch.frombuffer(bytearray(crop), dtype=torch.uint8).view(1, 32, 32, 3))[0]
        assert max_diff(ours, old_window_pixels(image, box, 32)) <= 1 / (255 * min(OPENAI_CLIP_STD)) + 1e-6, box


def test_map_size():
    assert map_size(80, 120) == (80, 120)  # small photos: full size
    assert map_size(6000, 8000) == (768, 1024)
    assert map_size(8000, 8000, max_side=256) == (256, 256)
    assert map_size(8000, 8000, max_side=None) == (8000, 8000)
    assert map_size(5, 5000) == (1, 1024)  # never a zero side


def test_a_reduced_map_samples_the_full_map_at_pixel_centres(tiny):
    # 300x200 at max_side=64 -> (43, 64); map pixel (i, j) is image pixel (floor((i + .5) * 200 / 43),
    # floor((j + .5) * 300 / 64)). Same windows, same scores: equal to float32 rounding.
    image = smooth_photo(300, 200)
    full = miniclip.relevance_map(tiny, image, "a cat", max_side=None)
    small = miniclip.relevance_map(tiny, image, "a cat", max_side=64)
    assert small.shape == map_size(200, 300, 64) == (43, 64)
    rows = ((torch.arange(43) + 0.5) * 200 / 43).long()
    cols = ((torch.arange(64) + 0.5) * 300 / 64).long()
    assert_close(small, full[rows][:, cols], atol=1e-6, rtol=0, what="reduced map vs the full map sampled")


def test_big_photo_is_cheap(tiny):
    # A 6000x4000 photo (24 Mpixel, 72 MB of bytes; the first implementation held 288 MB of floats for it,
    # and two full-size 96 MB maps). The timing bound is loose (a loaded 2-core machine); the real figure,
    # 8000x8000 with ViT-B/32, is in benchmarks/relevance.py.
    ramp = Image.linear_gradient("L").resize((6000, 4000))  # Pillow only: cheap to make at this size
    image = Image.merge("RGB", [ramp, ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT), ramp.rotate(180)])
    start = time.perf_counter()
    heat = miniclip.relevance_map(tiny, image, "a cat")
    seconds = time.perf_counter() - start
    assert heat.shape == (683, 1024)  # 4000 * 1024 / 6000 = 682.7
    assert seconds < 20, f"{seconds:.1f} s"


def test_progress_bar_on_stderr_only_for_slow_jobs(tiny, monkeypatch, capsys):
    image = smooth_photo(60, 40)
    miniclip.relevance_map(tiny, image, "a cat", progress=True)  # well under tqdm's delay=1: no bar
    assert capsys.readouterr().err == ""
    encode = tiny.encode_image

    def slow(pixels, **kwargs):
        time.sleep(0.25)
        return encode(pixels, **kwargs)

    monkeypatch.setattr(tiny, "encode_image", slow)
    n = len(windows(image.height, image.width))  # 71
    miniclip.relevance_map(tiny, image, "a cat", batch_size=16, progress=True)  # 5 batches: 1.25 s or more
    err = capsys.readouterr().err
    assert f"{n}/{n}" in err and "window" in err
    miniclip.relevance_map(tiny, image, "a cat", batch_size=16)  # progress=False: silent however slow
    assert capsys.readouterr().err == ""


def test_bad_scales_are_refused(tiny):
    with pytest.raises(miniclip.InputError, match="scales"):
        miniclip.relevance_map(tiny, smooth_photo(20, 20), "a cat", scales=(1.5,))
    with pytest.raises(miniclip.InputError, match="scales"):
        miniclip.relevance_map(tiny, smooth_photo(20, 20), "a cat", scales=())
