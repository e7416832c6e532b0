"""Preprocessing against transformers' Pillow pipeline (CLIPImageProcessorPil), and crop offsets by hand.

Reference: `CLIPImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s})`, what
`CLIPImageProcessor` falls back to without torchvision. Tolerance 1e-5 (the issue's); in practice the
difference is exactly 0, because the same Pillow calls run and the normalisation table holds the reference's
own float32 values.
"""

import json
import warnings

import numpy as np
import pytest
import torch
from compare import assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import miniclip
from miniclip.errors import ImageError, ImageNotFoundError, InputError, InputTypeError
from miniclip.image_processing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Preprocessor, crop_offset, preprocess

MODES = ["RGB", "1", "L", "LA", "P", "PA", "RGBA", "CMYK", "I;16", "I", "F"]
SIZES = [(1, 1), (224, 224), (401, 300), (300, 401), (600, 5), (5, 600), (37, 59), (225, 224), (640, 480)]


def random_image(width, height, mode="RGB", seed=0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    data = (torch.rand(height, width, 4, generator=g) * 255).to(torch.uint8)
    image = Image.frombytes("RGBA", (width, height), bytes(data.flatten().tolist()))
    if mode == "RGBA":
        return image
    if mode in ("LA", "PA"):
        return image.convert("LA") if mode == "LA" else image.convert("RGBA").convert("PA")
    rgb = image.convert("RGB")
    return rgb if mode == "RGB" else rgb.convert(mode)


def reference(size):
    from transformers import CLIPImageProcessorPil

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


@pytest.mark.parametrize("size,width,height", [(224, w, h) for w, h in SIZES] +
                         [(336, w, h) for w, h in [(1, 1), (336, 336), (401, 300), (37, 59), (500, 7)]])
def test_equals_transformers_pillow_pipeline_for_every_mode(size, width, height):
    ref = reference(size)
    for i, mode in enumerate(MODES):
        image = random_image(width, height, mode, seed=i)
        ours, theirs = preprocess(image, size=size), ref(image, return_tensors="pt")["pixel_values"][0]
        assert ours.shape == (3, size, size) and ours.dtype == torch.float32
        assert_close(ours, theirs, atol=1e-5, rtol=0, what=f"{mode} {width}x{height} at {size}")


def test_a_list_gives_a_batch_in_order(tmp_path):
    images = [random_image(50, 30, seed=1), random_image(30, 70, seed=2), random_image(64, 64, seed=3)]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    batch = preprocess(paths)
    assert batch.shape == (3, 3, 224, 224)
    for i, image in enumerate(images):
        assert torch.equal(batch[i], preprocess(image))
    assert preprocess([]).shape == (0, 3, 224, 224)
    assert torch.equal(miniclip.preprocess(str(paths[0])), preprocess(images[0]))


def test_jpeg_files_equal_the_reference(tmp_path):
    ref = reference(224)
    for i, (w, h) in enumerate([(640, 480), (401, 300), (123, 457)]):
        path = tmp_path / f"{i}.jpg"
        random_image(w, h, seed=i).save(path, quality=85)
        with Image.open(path) as image:
            theirs = ref(image, return_tensors="pt")["pixel_values"][0]
        assert_close(preprocess(path), theirs, atol=1e-5, rtol=0, what=f"JPEG {w}x{h}")


def test_known_values_by_hand():
    # A uniform image survives resize and crop unchanged, so each channel is (v / 255 - mean) / std.
    image = Image.new("RGB", (300, 250), (255, 0, 128))
    out = preprocess(image)
    expected = [(255 / 255 - OPENAI_CLIP_MEAN[0]) / OPENAI_CLIP_STD[0], (0 - OPENAI_CLIP_MEAN[1]) / OPENAI_CLIP_STD[1],
                (128 / 255 - OPENAI_CLIP_MEAN[2]) / OPENAI_CLIP_STD[2]]
    for c in range(3):
        assert torch.allclose(out[c], torch.full((224, 224), expected[c]), atol=1e-6)
    assert abs(expected[0] - 1.9303) < 1e-4  # (1 - 0.48145466) / 0.26862954
    # Transparency is composited onto white: a fully transparent pixel becomes white.
    clear = preprocess(Image.new("RGBA", (224, 224), (0, 0, 0, 0)))
    assert torch.allclose(clear[:, 0, 0], torch.tensor([(1 - m) / s for m, s in zip(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)]),
                          atol=1e-6)


@pytest.mark.parametrize("side,crop,transformers,openai", [
    (299, 224, 37, 38),  # 37.5: floor 37, half to even 38 (a 401x300 photo resized to 299x224)
    (297, 224, 36, 36),  # 36.5: 36 both ways (36 is even)
    (227, 224, 1, 2),  # 1.5 -> 1 and 2
    (225, 224, 0, 0),  # 0.5 -> 0 and 0
    (230, 224, 3, 3),  # exact
])
def test_crop_offsets_by_hand(side, crop, transformers, openai):
    assert crop_offset(side, crop, "transformers") == transformers
    assert crop_offset(side, crop, "openai") == openai


def test_openai_crop_is_shifted_where_the_rules_differ():
    image = random_image(401, 300, seed=5)  # resized to 299x224: offsets 37 (transformers) and 38 (openai)
    resized = image.resize((299, 224), Image.BICUBIC)
    by_hand = Preprocessor(size=224, crop_size=224)  # normalise a hand-made crop with the same table
    for rule, left in (("transformers", 37), ("openai", 38)):
        expected = by_hand(resized.crop((left, 0, left + 224, 224)))
        assert torch.equal(preprocess(image, crop=rule), expected)
    assert not torch.equal(preprocess(image, crop="openai"), preprocess(image))


def test_inputs_are_never_modified():
    for mode in MODES:
        image = random_image(97, 61, mode)
        before = (image.mode, image.size, image.tobytes())
        preprocess(image)
        assert (image.mode, image.size, image.tobytes()) == before


@pytest.mark.parametrize("config,size,crop", [
    ({"size": 224, "crop_size": 224}, 224, 224),  # the legacy integers of the openai repositories
    ({"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}, 336, 336),
    ({"size": {"height": 224, "width": 224}}, 224, 224),
    ({}, 224, 224),
])
def test_preprocessor_config_in_all_its_forms(tmp_path, config, size, crop):
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({**config, "image_mean": list(OPENAI_CLIP_MEAN), "resample": 3}))
    p = Preprocessor.from_config_file(path)
    assert (p.size, p.crop_size, p.resample) == (size, crop, Image.Resampling.BICUBIC)


def test_bad_preprocessor_configs(tmp_path):
    path = tmp_path / "preprocessor_config.json"
    path.write_text("{oops")
    with pytest.raises(ImageError, match="preprocessor_config.json"):
        Preprocessor.from_config_file(path)
    path.write_text(json.dumps({"size": "big"}))
    with pytest.raises(ImageError, match="size is 'big'"):
        Preprocessor.from_config_file(path)
    path.write_text(json.dumps({"size": {"height": 224, "width": 300}}))
    with pytest.raises(ImageError, match="not square"):
        Preprocessor.from_config_file(path)


def test_file_errors_name_the_file(tmp_path, monkeypatch):
    with pytest.raises(ImageNotFoundError, match="nothere.png") as e:
        preprocess(tmp_path / "nothere.png")
    assert isinstance(e.value, FileNotFoundError)
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ImageError, match=r"notes\.jpg \(image 1\)"):
        preprocess([random_image(10, 10), tmp_path / "notes.jpg"])
    random_image(300, 300).save(tmp_path / "big.png")
    data = (tmp_path / "big.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.png"):
        preprocess(tmp_path / "cut.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 300x300 is now a "decompression bomb"
    with pytest.raises(ImageError, match=r"big\.png is too large to open safely"):
        preprocess(tmp_path / "big.png")
    with pytest.raises(ImageError, match="is a folder"):
        preprocess(tmp_path)


def test_type_and_value_errors():
    with pytest.raises(InputTypeError, match=r"images\[1\] is a int"):
        preprocess([random_image(4, 4), 7])
    with pytest.raises(InputTypeError, match="Tensor"):
        preprocess(torch.zeros(3, 224, 224))
    with pytest.raises(ValueError, match="crop='center'"):
        preprocess(random_image(4, 4), crop="center")
    with pytest.raises(ValueError, match="size=0"):
        preprocess(random_image(4, 4), size=0)


@settings(derandomize=True, max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(width=st.integers(1, 80), height=st.integers(1, 80), mode=st.sampled_from(MODES), seed=st.integers(0, 99))
def test_random_small_images_never_crash(width, height, mode, seed):
    out = Preprocessor(size=32, crop_size=32)(random_image(width, height, mode, seed))
    assert out.shape == (3, 32, 32) and torch.isfinite(out).all()


def test_files_equal_the_reference_given_the_same_path(tmp_path):
    # The reference reads a path with `load_image`: EXIF rotation, then convert("RGB"), which drops alpha
    # instead of compositing it onto white; a P image's transparency key survives and is composited.
    # So files with alpha or an EXIF orientation differ from the same image passed as a PIL image.
    ref = reference(224)
    files = {}
    for i, mode in enumerate(["RGBA", "LA", "P", "1", "L", "I;16", "RGB"]):
        image = random_image(61, 47, mode, seed=10 + i)
        if mode == "P":
            image.info["transparency"] = 5
        files[mode] = tmp_path / f"{i}.png"
        image.save(files[mode])
    files["CMYK"] = tmp_path / "cmyk.jpg"
    random_image(83, 41, "CMYK", seed=20).save(files["CMYK"])
    for orientation in (3, 6, 8):  # rotated 180, 270 and 90 degrees
        image, exif = random_image(64, 48, seed=orientation), Image.Exif()
        exif[0x0112] = orientation
        files[f"exif{orientation}"] = tmp_path / f"exif{orientation}.jpg"
        image.save(files[f"exif{orientation}"], exif=exif)
    batch = preprocess(list(files.values()))  # threads, and str and Path both accepted
    for i, (what, path) in enumerate(files.items()):
        theirs = ref(str(path), return_tensors="pt")["pixel_values"][0]
        assert_close(batch[i], theirs, atol=1e-5, rtol=0, what=f"file {what}")
        assert_close(preprocess(str(path)), theirs, atol=1e-5, rtol=0, what=f"file {what}, alone")


def test_decompression_bomb_warning_range_is_refused(tmp_path, monkeypatch):
    # Pillow raises only above 2 * MAX_IMAGE_PIXELS and merely warns between 1x and 2x; both are refused.
    random_image(40, 40).save(tmp_path / "bomb.png")  # 1600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match=r"bomb\.png \(image 1\) is too large"):
        preprocess([random_image(8, 8), tmp_path / "bomb.png"])


@pytest.mark.parametrize("size,width,height,left,top", [
    (224, 401, 300, 38, 0),  # 299x224: 37.5 -> 38 (transformers: 37)
    (224, 300, 401, 0, 38),  # the same, portrait
    (336, 401, 300, 56, 0),  # 449x336: 56.5 -> 56 (even), transformers 56 too
    (336, 339, 336, 2, 0),  # no resize: 1.5 -> 2, transformers 1
    (336, 1000, 599, 112, 0),  # 560x336: 112 both ways
    (224, 305, 224, 40, 0),  # 305x224: 40.5 -> 40 (even), transformers 40 too
    (224, 307, 224, 42, 0),  # 307x224: 41.5 -> 42, transformers 41
])
def test_openai_crop_by_hand(size, width, height, left, top):
    image = random_image(width, height, seed=width)
    new = (int(size * width / height), size) if width > height else (size, int(size * height / width))
    resized = image.resize(new, Image.BICUBIC)
    assert crop_offset(new[0], size, "openai") == left and crop_offset(new[1], size, "openai") == top
    crop = resized.crop((left, top, left + size, top + size))
    pixels = torch.frombuffer(bytearray(crop.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)
    mean, std = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1), torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    expected = (pixels.double() / 255 - mean) / std  # the formula, in float64
    assert_close(preprocess(image, size=size, crop="openai"), expected.float(), atol=1e-5, rtol=0,
                 what=f"openai crop {width}x{height} at {size}")


def test_height_width_size_squashes_like_transformers():
    # size {"height", "width"}: transformers resizes to exactly that, ignoring the aspect ratio.
    from transformers import CLIPImageProcessorPil

    config = {"size": {"height": 224, "width": 224}, "crop_size": {"height": 224, "width": 224}}
    ours = Preprocessor.from_dict(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = CLIPImageProcessorPil(**config)
    for w, h in [(401, 300), (50, 500), (224, 224)]:
        image = random_image(w, h, seed=w)
        assert_close(ours(image), ref(image, return_tensors="pt")["pixel_values"][0], atol=1e-5, rtol=0,
                     what=f"squashed {w}x{h}")
    assert not ours.keep_aspect and Preprocessor.from_dict({"size": {"shortest_edge": 224}}).keep_aspect


@pytest.mark.parametrize("field,value", [("do_normalize", False), ("do_rescale", False), ("do_resize", False),
                                         ("rescale_factor", 1 / 127.5)])
def test_configs_turning_steps_off_are_refused(field, value):
    with pytest.raises(ImageError, match=field):
        Preprocessor.from_dict({"size": 224, field: value}, source="preprocessor_config.json")


# -----------------------------------------------------------------------------
# Pixels in arrays: numpy (H, W, C) and torch (C, H, W), uint8. Each must give exactly, bit for bit, what the
# same picture gives as a PIL image, which is built here from the raw bytes, independently of numpy.

ARRAY_MODES = {3: "RGB", 4: "RGBA", 1: "L"}  # channels -> the PIL mode of the same picture


def random_pixels(height, width, channels, seed=0) -> torch.Tensor:
    """(H, W, C) uint8 noise; C = 4 has a varied alpha, so that compositing onto white shows."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(height, width, channels, generator=g) * 256).to(torch.uint8)


def same_picture_as_pil(hwc: torch.Tensor) -> Image.Image:
    height, width, channels = hwc.shape
    return Image.frombytes(ARRAY_MODES[channels], (width, height), bytes(hwc.flatten().tolist()))


def as_numpy(hwc: torch.Tensor):
    return hwc.numpy()[:, :, 0].copy() if hwc.shape[2] == 1 else hwc.numpy().copy()  # grey: (H, W)


def as_tensor(hwc: torch.Tensor) -> torch.Tensor:
    return hwc.permute(2, 0, 1).clone()  # (C, H, W)


@pytest.mark.parametrize("channels", [3, 4, 1])
@pytest.mark.parametrize("width,height", [(1, 1), (37, 59), (401, 300), (224, 224)])
@pytest.mark.parametrize("convert", [as_numpy, as_tensor])
def test_arrays_equal_the_same_picture_as_a_pil_image(channels, width, height, convert):
    hwc = random_pixels(height, width, channels, seed=width + channels)
    expected = preprocess(same_picture_as_pil(hwc))
    assert torch.equal(preprocess(convert(hwc)), expected)
    openai = Preprocessor(size=32, crop_size=32, crop="openai")
    assert torch.equal(openai(convert(hwc)), openai(same_picture_as_pil(hwc)))


def test_rgba_arrays_are_composited_onto_white():
    rgba = random_pixels(40, 30, 4, seed=3)
    rgba[..., 3] = 0  # fully transparent: the picture is white
    white = preprocess(Image.new("RGB", (30, 40), (255, 255, 255)))
    assert torch.equal(preprocess(rgba.numpy()), white) and torch.equal(preprocess(as_tensor(rgba)), white)


def test_strided_views_equal_their_copies():
    hwc = random_pixels(50, 70, 3, seed=4).numpy()
    for view in (hwc[:, ::-1], hwc[..., ::-1], hwc[5:40:2, 3:60]):  # mirrored, BGR <-> RGB, strided crop
        assert not view.flags.c_contiguous
        assert torch.equal(preprocess(view), preprocess(view.copy()))
    chw = torch.from_numpy(hwc).permute(2, 0, 1)  # a view of numpy's layout, not contiguous
    assert torch.equal(preprocess(chw), preprocess(Image.fromarray(hwc)))


def test_a_list_may_mix_paths_pil_images_arrays_and_tensors(tmp_path):
    pictures = [random_pixels(30 + 7 * i, 50 - 5 * i, 3, seed=i) for i in range(4)]
    same_picture_as_pil(pictures[0]).save(tmp_path / "0.png")
    mixed = [tmp_path / "0.png", same_picture_as_pil(pictures[1]), pictures[2].numpy(), as_tensor(pictures[3])]
    batch = preprocess(mixed)
    assert batch.shape == (4, 3, 224, 224)
    for i, picture in enumerate(pictures):
        assert torch.equal(batch[i], preprocess(same_picture_as_pil(picture))), f"image {i}"


def test_arrays_and_tensors_are_not_modified():
    array, tensor = random_pixels(33, 44, 4, seed=5).numpy(), as_tensor(random_pixels(33, 44, 3, seed=6))
    array_before, tensor_before, writeable = array.copy(), tensor.clone(), array.flags.writeable
    preprocess([array, tensor])
    preprocess(array)
    assert (array == array_before).all() and array.flags.writeable == writeable
    assert torch.equal(tensor, tensor_before)


@pytest.mark.parametrize("image,error,words", [
    (np.zeros((32, 32, 3), np.float32), InputTypeError, ["numpy.ndarray", "float32", "(32, 32, 3)", "uint8",
                                                         "model.encode_image"]),
    (torch.rand(3, 32, 32), InputTypeError, ["torch.Tensor", "float32", "(3, 32, 32)", "uint8 pixels (0-255)"]),
    (np.zeros((32, 32, 3), np.int64), InputTypeError, ["int64", "(H, W, 3), (H, W, 4) or (H, W)"]),
    (np.zeros((3, 32, 40), np.uint8), InputError, ["(3, 32, 40)", "array.transpose(1, 2, 0)"]),
    (torch.zeros(32, 40, 3, dtype=torch.uint8), InputError, ["(32, 40, 3)", "tensor.permute(2, 0, 1)",
                                                             "(3, H, W), (4, H, W) or (1, H, W)"]),
    (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), InputError, ["(2, 3, 8, 8)", "list(batch)"]),
    (np.zeros((2, 8, 8, 3), np.uint8), InputError, ["(2, 8, 8, 3)", "list(batch)"]),
    (np.zeros((8, 8, 2), np.uint8), InputError, ["(8, 8, 2)", "expected one image"]),
    (torch.zeros(8, 8, dtype=torch.uint8), InputError, ["(8, 8)", "unsqueeze(0)"]),
    (np.zeros((0, 8, 3), np.uint8), InputError, ["(0, 8, 3)", "empty"]),
])
def test_arrays_of_other_dtypes_or_shapes_are_refused(image, error, words):
    for call, what in ((lambda: preprocess(image), "images is a"),
                       (lambda: preprocess([random_image(4, 4), image]), "images[1] is a")):
        with pytest.raises(error) as e:
            call()
        for w in [what, *words]:
            assert w in str(e.value), str(e.value)
