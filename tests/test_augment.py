"""The training augmentation (miniclip/train/augment.py): torchvision's random resized crop, drawn from a
given generator, with the evaluation transform's filter, compositing and normalisation table."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from miniclip.image_processing import Preprocessor
from miniclip.train.augment import RandomResizedCrop

SMALL = Preprocessor(size=32, crop_size=32)  # small outputs keep the tests fast


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels, mode)


def coordinates(side: int = 256) -> Image.Image:
    """Each pixel says where it is: red = x, green = y, blue = 0."""
    pixels = np.zeros((side, side, 3), dtype=np.uint8)
    pixels[..., 0] = np.arange(side)[None, :]
    pixels[..., 1] = np.arange(side)[:, None]
    return Image.fromarray(pixels)


def hand_centre_box(width, height, ratio):
    """The fallback, as torchvision documents it: a centred box, as large as fits, aspect clamped into ratio."""
    if width / height < ratio[0]:  # too tall: the whole width, the height the lowest aspect allows
        w, h = width, max(1, round(width / ratio[0]))
    elif width / height > ratio[1]:  # too wide: the whole height
        w, h = max(1, round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


# -- reproducibility


def test_same_seed_gives_identical_crops_and_other_seeds_differ():
    augment, image = RandomResizedCrop(SMALL), noise(97, 81)  # 1.2:1, within reach of the default boxes
    first = augment(image, seeded(1234))
    assert first.shape == (3, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, augment(image, seeded(1234)))
    # scale (0.9, 1) leaves little room, but over several seeds the box must move or change size somewhere.
    assert any(not torch.equal(first, augment(image, seeded(seed))) for seed in range(8))
    boxes = {augment.box(97, 81, seeded(seed)) for seed in range(8)}
    assert len(boxes) > 1, boxes


# -- the box


@settings(max_examples=300, deadline=None)
@given(width=st.integers(1, 600), height=st.integers(1, 600), seed=st.integers(0, 2**32 - 1),
       scale=st.tuples(st.floats(0.01, 1.0), st.floats(0.01, 1.0)).map(sorted),
       ratio=st.tuples(st.floats(0.1, 10.0), st.floats(0.1, 10.0)).map(sorted))
def test_box_lies_inside_and_respects_scale_and_ratio(width, height, seed, scale, ratio):
    augment = RandomResizedCrop(SMALL, scale=tuple(scale), ratio=tuple(ratio))
    left, top, w, h = augment.box(width, height, seeded(seed))
    assert 0 < w and 0 < h and 0 <= left and 0 <= top and left + w <= width and top + h <= height
    if (left, top, w, h) == hand_centre_box(width, height, ratio):
        return  # the fallback (or a drawn box that happens to equal it): its area is not bounded by scale
    # A drawn box rounds W' = sqrt(A * a) and H' = sqrt(A / a) (A the target area, a the aspect) to the
    # nearest integers, so |w - W'| <= 1/2 and |h - H'| <= 1/2. Then |w*h - A| = |w*h - W'H'| <=
    # (W' + H')/2 + 1/4 <= (w + h + 1)/2 + 1/4; and a = W'/H' lies in [(w - 1/2)/(h + 1/2), (w + 1/2)/(h - 1/2)].
    # The draws are float32, so the bounds get a relative slack of 1e-6.
    area, slack = width * height, (w + h) / 2 + 0.75
    assert scale[0] * area * (1 - 1e-6) - slack <= w * h <= scale[1] * area * (1 + 1e-6) + slack
    assert (w - 0.5) / (h + 0.5) <= ratio[1] * (1 + 1e-6)
    assert (w + 0.5) / (h - 0.5) >= ratio[0] * (1 - 1e-6)


def test_fallback_is_the_centre_crop_with_the_aspect_clamped():
    # 1000x10, square boxes of 90-100% of the area: every drawn box is ~95-100 pixels high, taller than the
    # image, so all 10 attempts fail. Too wide (100 > 1): keep h = 10, w = 10 * 1 = 10, left = 990 // 2 = 495.
    wide = RandomResizedCrop(SMALL, scale=(0.9, 1.0), ratio=(1.0, 1.0))
    assert wide.box(1000, 10, seeded(0)) == (495, 0, 10, 10)
    # 10x1000 with aspects 2-3: too tall (0.01 < 2): keep w = 10, h = round(10 / 2) = 5, top = 995 // 2 = 497.
    tall = RandomResizedCrop(SMALL, scale=(0.9, 1.0), ratio=(2.0, 3.0))
    assert tall.box(10, 1000, seeded(0)) == (0, 497, 10, 5)
    # The crop is that box: the centre 10x10 of the wide image, resized and normalised as any box is.
    image = noise(1000, 10)
    assert torch.equal(wide(image, seeded(0)), wide.resized_crop(image, (495, 0, 10, 10)))


def test_with_the_default_scale_a_3_by_2_photo_always_gets_the_fallback():
    # A box of area s * W * H with aspect a fits only if sqrt(s W H a) <= W and sqrt(s W H / a) <= H, i.e.
    # s * W/H <= a <= W/H / s. For 300x200 (W/H = 1.5) and s >= 0.9 that needs a >= 1.35 > 4/3: no draw
    # fits (rounding cannot save it: at s = 0.9, a = 4/3, h = round(sqrt(54000 * 3/4)) = round(201.2) = 201
    # > 200), so every seed gets the centre crop: h = 200, w = round(200 * 4/3) = 267, left = 33 // 2 = 16.
    augment = RandomResizedCrop(SMALL)
    assert {augment.box(300, 200, seeded(seed)) for seed in range(20)} == {(16, 0, 267, 200)}
    assert {augment.box(200, 300, seeded(seed)) for seed in range(20)} == {(0, 16, 200, 267)}


# -- the pixels


def test_whole_square_image_gives_the_evaluation_transform():
    # scale (1, 1) and ratio (1, 1): target area = area, aspect = exp(0) = 1, so w = h = round(sqrt(side^2))
    # = side, and randint(0, 1) puts it at (0, 0): the whole image. It is resized to crop x crop with the
    # same bicubic filter the evaluation transform uses to bring the shorter side (here every side) to
    # size = crop, whose centre crop is then everything; both go through the same normalisation table.
    for side, crop in [(50, 32), (20, 32), (32, 32)]:  # down, up, and no resize
        evaluate = Preprocessor(size=crop, crop_size=crop)
        augment = RandomResizedCrop(evaluate, scale=(1.0, 1.0), ratio=(1.0, 1.0))
        image = noise(side, side, seed=side)
        assert torch.equal(augment(image, seeded(side)), evaluate(image)), side


def test_a_worked_box_on_an_image_of_coordinates():
    # The box (left 32, top 64, w 128, h 64) resized to 32x32: each output pixel covers 128/32 = 4 columns
    # and 64/32 = 2 rows. NEAREST takes the source pixel under the output pixel's centre:
    # x = 32 + floor((i + 1/2) * 4) = 34 + 4i, y = 64 + floor((j + 1/2) * 2) = 65 + 2j. So the top-left
    # corner is (34, 65) and the bottom-right (34 + 124, 65 + 62) = (158, 127), inside the box's corners
    # (32, 64) and (159, 127).
    nearest = Preprocessor(size=32, crop_size=32, resample=Image.Resampling.NEAREST)
    out = RandomResizedCrop(nearest).resized_crop(coordinates(), (32, 64, 128, 64))
    i = torch.arange(32)
    expected = torch.zeros(1, 32, 32, 3, dtype=torch.uint8)
    expected[0, :, :, 0] = (34 + 4 * i)[None, :]  # red = x, along each row
    expected[0, :, :, 1] = (65 + 2 * i)[:, None]  # green = y, down each column
    assert torch.equal(out, nearest.normalise(expected)[0])
    table = nearest.table()
    assert out[0, 0, 0] == table[0, 34] and out[1, 0, 0] == table[1, 65]
    assert out[0, -1, -1] == table[0, 158] and out[1, -1, -1] == table[1, 127]


def test_a_box_forced_to_the_whole_image_by_scale_and_ratio():
    # A 256x256 image of coordinates with scale (1, 1), ratio (1, 1) to 32x32: the box is the whole image
    # (see above), 8 pixels per output pixel, centres at 8i + 4: the corners are (4, 4) and (252, 252).
    nearest = Preprocessor(size=32, crop_size=32, resample=Image.Resampling.NEAREST)
    out = RandomResizedCrop(nearest, scale=(1.0, 1.0), ratio=(1.0, 1.0))(coordinates(), seeded(0))
    table = nearest.table()
    assert out[0, 0, 0] == table[0, 4] and out[1, 0, 0] == table[1, 4]
    assert out[0, -1, -1] == table[0, 252] and out[1, -1, -1] == table[1, 252]


# -- the inputs


@pytest.mark.parametrize("name, value", [
    ("scale", (0.0, 1.0)), ("scale", (0.5, 0.4)), ("scale", (0.5, 1.5)), ("scale", (-0.1, 0.5)),
    ("scale", (float("nan"), 1.0)), ("scale", (0.9,)), ("scale", 0.9), ("scale", ("a", "b")),
    ("ratio", (0.0, 1.0)), ("ratio", (2.0, 1.0)), ("ratio", (-1.0, 1.0)), ("ratio", (1.0, math.inf)),
    ("ratio", (1.0, 2.0, 3.0)),
])
def test_bad_arguments_are_refused_by_name(name, value):
    with pytest.raises(ValueError, match=rf"^{name}=.*expected"):
        RandomResizedCrop(SMALL, **{name: value})


def test_the_input_image_is_not_modified():
    for mode in ("RGB", "RGBA"):
        image = noise(80, 60, mode)
        before = image.tobytes()
        RandomResizedCrop(SMALL)(image, seeded(3))
        assert image.tobytes() == before and image.mode == mode and image.size == (80, 60)


def test_transparency_is_composited_on_white_as_in_evaluation():
    rgba = noise(40, 40, "RGBA", seed=5)
    # On white: each channel is c * alpha + 255 * (1 - alpha), done here by Pillow's own compositing.
    white = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    augment = RandomResizedCrop(SMALL)
    assert torch.equal(augment(rgba, seeded(9)), augment(white, seeded(9)))
    # And with the box forced to the whole square image, exactly the evaluation transform's output.
    whole = RandomResizedCrop(SMALL, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.equal(whole(rgba, seeded(9)), SMALL(rgba))


def test_a_path_reads_as_the_evaluation_transform_reads_it(tmp_path):
    image = noise(70, 50, seed=7)
    image.save(tmp_path / "photo.png")
    augment = RandomResizedCrop(SMALL)
    assert torch.equal(augment(tmp_path / "photo.png", seeded(2)), augment(image, seeded(2)))
    assert torch.equal(augment(str(tmp_path / "photo.png"), seeded(2)), augment(image, seeded(2)))
