"""Image preprocessing: from a photo to the normalised pixels CLIP was trained on.

The pipeline (Radford et al. 2021; the same in OpenAI's release and in transformers):
1. convert to RGB (images with transparency are composited onto white first, as transformers does);
2. resize so the shorter side is `size` pixels, Pillow's bicubic filter, the longer side
   `int(size * long / short)` (truncated, not rounded);
3. centre-crop to `crop_size` x `crop_size`;
4. scale to [0, 1] and normalise each channel with CLIP's mean and std.

It reproduces transformers' Pillow backend (`CLIPImageProcessorPil`) exactly: steps 1-3 are the same Pillow
calls, and step 4 is a lookup table holding, for each channel and each of the 256 byte values, the float32
number the reference computes (`float32(p * (1/255) in float64)`, then `(x - mean) / std` in float32).

The one place the references disagree is the crop offset: transformers floors `(side - crop) / 2`,
OpenAI's torchvision `CenterCrop` rounds it half to even, so a 401x300 photo is cropped one pixel apart.
`crop="transformers"` (default) and `crop="openai"` give each exactly.
"""

import json
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import ImageError, ImageNotFoundError, InputError, InputTypeError

# The per-channel RGB mean and std of CLIP's training images, from OpenAI's clip/clip.py (`_transform`).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CROP_RULES = ("transformers", "openai")
_WARNINGS_LOCK = threading.Lock()
MAX_THREADS = 8  # Pillow releases the GIL while decoding and resizing, so a batch is spread over threads


@dataclass(frozen=True)
class Preprocessor:
    """A callable: `preprocess(image or list of images) -> [3, crop, crop]` or `[n, 3, crop, crop]`, where an
    image is a path, a PIL image, a uint8 numpy array (H, W, C) or a uint8 tensor (C, H, W)."""

    size: int = 224  # the shorter side after resizing
    crop_size: int = 224
    crop: str = "transformers"  # how the crop offset is rounded: "transformers" (floor) or "openai" (half to even)
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resample: int = Image.Resampling.BICUBIC
    # True: the shorter side becomes `size`, keeping the aspect ratio (CLIP's way). False: the image is
    # squashed to size x size, as transformers does for a config with size {"height": h, "width": w}.
    keep_aspect: bool = True

    def __post_init__(self):
        if self.crop not in CROP_RULES:
            raise ValueError(f"crop={self.crop!r}; expected one of {CROP_RULES}")
        for name in ("size", "crop_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r}; expected a positive integer number of pixels")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (R, G, B); got {self.mean} and {self.std}")

    def __call__(self, images) -> torch.Tensor:
        """One image -> (3, crop, crop) float32; a list of them -> (n, 3, crop, crop). An image is a path, a
        PIL image, a uint8 numpy array (H, W, 3), (H, W, 4) or (H, W), or a uint8 tensor (3, H, W), (4, H, W)
        or (1, H, W): see `as_image`."""
        if isinstance(images, (list, tuple)):
            images = [as_image(image, f"images[{i}]") for i, image in enumerate(images)]
            return self.normalise(self.read(images))
        return self.normalise(self.read([as_image(images, "images")], indexed=False))[0]

    def read(self, images, indexed: bool = True) -> torch.Tensor:
        """Images (PIL or paths) -> (n, crop_size, crop_size, 3) uint8: steps 1-3, all in Pillow.

        Several images are read on threads: Pillow releases the GIL while it decodes and resizes, and the
        threads do nothing but Pillow calls (torch's own thread pool is left to `normalise`).
        """
        indices = range(len(images)) if indexed else [None]
        if len(images) < 2:
            crops = [self.crop_bytes(image, i) for image, i in zip(images, indices)]
        else:
            with ThreadPoolExecutor(min(len(images), os.cpu_count() or 1, MAX_THREADS)) as pool:
                crops = list(pool.map(self.crop_bytes, images, indices))
        side = self.crop_size
        if not crops:
            return torch.empty(0, side, side, 3, dtype=torch.uint8)  # frombuffer refuses an empty buffer
        return torch.frombuffer(bytearray().join(crops), dtype=torch.uint8).view(len(crops), side, side, 3)

    def crop_bytes(self, image, index: int | None = None) -> bytes:
        """One image (PIL or path) -> its crop_size x crop_size RGB pixels, as bytes (row by row, R G B)."""
        if not isinstance(image, Image.Image):
            image = open_image(image, index)
        rgb = to_rgb(image)
        if self.keep_aspect:
            rgb = resize_shorter_side(rgb, self.size, self.resample)
        else:
            rgb = rgb.resize((self.size, self.size), resample=self.resample)
        return center_crop(rgb, self.crop_size, self.crop).tobytes()

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, H, W, 3) uint8 -> (n, 3, H, W) float32: step 4, each byte looked up in its channel's table."""
        table = self.table()
        n, height, width, _ = pixels.shape
        out = torch.empty(n, 3, height, width)
        for c in range(3):  # one channel at a time, int32 indices: the temporaries stay small
            out[:, c] = table[c].index_select(0, pixels[..., c].reshape(-1).int()).view(n, height, width)
        return out

    def table(self) -> torch.Tensor:
        """(3, 256) float32: the normalised value of each byte in each channel, as the reference computes it."""
        return normalisation_table(tuple(self.mean), tuple(self.std))

    # -- reading a checkpoint's preprocessor_config.json

    @classmethod
    def from_config_file(cls, path, crop: str = "transformers") -> "Preprocessor":
        path = Path(path)
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ImageError(f"cannot read the preprocessor config {path}: {e}") from e
        return cls.from_dict(config, source=str(path), crop=crop)

    @classmethod
    def from_dict(cls, config: dict, source: str = "preprocessor config", crop: str = "transformers"):
        """Every form the Hub's preprocessor_config.json files use: the legacy integers of the openai repos
        (`"size": 224, "crop_size": 224`) and the dicts of newer ones (`{"shortest_edge": 224}`,
        `{"height": 224, "width": 224}`)."""
        # Steps miniclip always takes; a config that turns one off, or changes the 1/255 scale, is refused
        # rather than silently ignored.
        for flag in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"):
            if config.get(flag, True) is False:
                raise ImageError(f"{source}: {flag} is false; miniclip's preprocessing always does that step")
        if abs(config.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12:
            raise ImageError(f"{source}: rescale_factor is {config['rescale_factor']}; expected 1/255")
        size = side(config.get("size", 224), ("shortest_edge", "height"), "size", source)
        squash = isinstance(config.get("size"), dict) and "shortest_edge" not in config["size"]
        crop_size = side(config.get("crop_size", size), ("height", "shortest_edge"), "crop_size", source)
        if config.get("do_center_crop", True) is False and crop_size != size:
            raise ImageError(f"{source}: do_center_crop is false but crop_size ({crop_size}) differs from size "
                             f"({size}); CLIP needs square inputs")
        if isinstance(config.get("size"), dict) and {"height", "width"} <= config["size"].keys() \
                and config["size"]["height"] != config["size"]["width"]:
            raise ImageError(f"{source}: size {config['size']} is not square; CLIP needs square inputs")
        try:
            return cls(size=size, crop_size=crop_size, crop=crop,
                       mean=tuple(config.get("image_mean", OPENAI_CLIP_MEAN)),
                       std=tuple(config.get("image_std", OPENAI_CLIP_STD)),
                       resample=int(config.get("resample", Image.Resampling.BICUBIC)), keep_aspect=not squash)
        except (TypeError, ValueError) as e:
            raise ImageError(f"{source}: {e}") from e

    def to_dict(self) -> dict:
        """This pipeline as a preprocessor_config.json dict for transformers' CLIPImageProcessor (which
        `from_dict` reads back). transformers only floors the crop offset, so crop="openai" cannot be written."""
        if self.crop != "transformers":
            raise ValueError(f"crop={self.crop!r}: transformers' CLIPImageProcessor only has the 'transformers' crop")
        size = {"shortest_edge": self.size} if self.keep_aspect else {"height": self.size, "width": self.size}
        return {
            "do_convert_rgb": True, "do_resize": True, "size": size, "resample": int(self.resample),
            "do_center_crop": True, "crop_size": {"height": self.crop_size, "width": self.crop_size},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(self.mean), "image_std": list(self.std), "image_processor_type": "CLIPImageProcessor",
        }


def side(value, keys, field: str, source: str) -> int:
    """A size field, an int or a dict with one of `keys`, as an int."""
    if isinstance(value, dict):
        for key in keys:
            if key in value:
                return value[key]
        raise ImageError(f"{source}: {field} {value} has none of the keys {list(keys)}")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ImageError(f"{source}: {field} is {value!r}; expected an integer or a dict like {{'{keys[0]}': 224}}")


@torch.no_grad()
def _table(mean, std) -> torch.Tensor:
    scaled = (torch.arange(256, dtype=torch.float64) * (1 / 255)).to(torch.float32)  # rescale in float64, then cast
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1)
    return (scaled - m) / s  # (3, 256), float32 arithmetic as the reference does it


_TABLES: dict = {}


def normalisation_table(mean, std) -> torch.Tensor:
    key = (mean, std)
    if key not in _TABLES:  # a race here only computes the same table twice
        _TABLES[key] = _table(mean, std)
    return _TABLES[key]


# -----------------------------------------------------------------------------
# The steps


def as_image(image, what: str):
    """A path or PIL image as it is; pixels in an array as the PIL image they are, so that they give exactly
    what that PIL image gives (an alpha channel is composited onto white, as for any PIL image).

    numpy arrays are read in numpy's (and Pillow's, OpenCV's, imageio's) layout: (H, W, 3) RGB, (H, W, 4)
    RGBA, (H, W) grey. Tensors are read in torch's (torchvision.io.read_image's) layout: (3, H, W),
    (4, H, W), (1, H, W). Both must be uint8, 0-255: float pixels come in too many conventions (0-1, 0-255,
    already normalised) to guess which. OpenCV's arrays are BGR: pass `array[..., ::-1]`.
    """
    if isinstance(image, (Image.Image, str, os.PathLike)):
        return image
    if isinstance(image, np.ndarray):
        hwc = check_pixels(image, what, "numpy.ndarray", channels_last=True)
    elif isinstance(image, torch.Tensor):
        chw = check_pixels(image, what, "torch.Tensor", channels_last=False)
        hwc = chw.detach().cpu().permute(1, 2, 0).squeeze(2).numpy()  # (H, W, C); grey: (H, W)
    else:
        raise InputTypeError(f"{what} is a {type(image).__name__}; expected a PIL.Image.Image, a path to an "
                             "image file, a uint8 numpy array (H, W, 3) or a uint8 tensor (3, H, W) (or a list "
                             "of them)")
    # Pillow picks the mode from the shape: (H, W) "L", (H, W, 3) "RGB", (H, W, 4) "RGBA". It reads the pixels
    # and never writes them; the copy into a contiguous block (only for a strided view) is ours.
    return Image.fromarray(np.ascontiguousarray(hwc))


def check_pixels(pixels, what: str, kind: str, channels_last: bool):
    """`pixels` (a numpy array or a tensor) if it is one uint8 image in its kind's layout, else an error
    that names what it is and, where it can tell, what to do."""
    shape, dtype = tuple(pixels.shape), pixels.dtype
    expected = "(H, W, 3), (H, W, 4) or (H, W)" if channels_last else "(3, H, W), (4, H, W) or (1, H, W)"
    found = f"{what} is a {kind} of dtype {str(dtype).removeprefix('torch.')} and shape {shape}"
    is_tensor = isinstance(pixels, torch.Tensor)
    if dtype != (torch.uint8 if is_tensor else np.uint8):
        floating = dtype.is_floating_point if is_tensor else np.issubdtype(dtype, np.floating)
        hint = "; normalised pixels go straight to model.encode_image" if floating else ""
        raise InputTypeError(f"{found}; expected uint8 pixels (0-255) shaped {expected}{hint}")
    if channels_last:
        fits = len(shape) == 2 or (len(shape) == 3 and shape[2] in (3, 4))
        swapped = len(shape) == 3 and shape[0] in (1, 3, 4)
        hint = "numpy arrays are read as (H, W, C): use array.transpose(1, 2, 0)" if swapped else ""
    else:
        fits = len(shape) == 3 and shape[0] in (1, 3, 4)
        swapped = len(shape) == 3 and shape[2] in (3, 4)
        hint = "tensors are read as (C, H, W): use tensor.permute(2, 0, 1)" if swapped else ""
        hint = "for a grey (H, W) tensor use tensor.unsqueeze(0)" if len(shape) == 2 else hint
    if len(shape) == 4:
        hint = "a batch: pass a list of images, e.g. list(batch)"
    if not fits:
        raise InputError(f"{found}; expected one image shaped {expected}" + (f" ({hint})" if hint else ""))
    height, width = shape[:2] if channels_last else shape[1:]
    if height == 0 or width == 0:
        raise InputError(f"{found}: the image is empty")
    return pixels


def open_image(path, index: int | None = None) -> Image.Image:
    """Reads an image file as transformers' `load_image` does: rotated upright by its EXIF orientation, then
    `convert("RGB")`. So for files an alpha band is dropped, not composited onto white (`to_rgb` then only
    composites a transparency key that survives the conversion, e.g. a P PNG's tRNS colour): the reference
    treats a path and the same image passed as a PIL image differently, and we follow it in both.

    The file is decoded here, so a truncated file fails here, naming it. Pillow only warns about an image
    between `PIL.Image.MAX_IMAGE_PIXELS` and twice that; we refuse it like a bigger one.
    """
    where = f"{path}" + (f" (image {index})" if index is not None else "")
    try:
        # The warnings filter is process-global: batches open their files on several threads, hence the lock.
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return image if image.mode == "RGB" else image.convert("RGB")  # for RGB the reference's convert only copies
    except FileNotFoundError as e:
        raise ImageNotFoundError(f"no such image file: {where}") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{where} is too large to open safely ({e}); raise PIL.Image.MAX_IMAGE_PIXELS if you "
                         "trust it") from e
    except IsADirectoryError as e:
        raise ImageError(f"{where} is a folder, not an image file") from e
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's ways of saying "not an image" / "truncated"
        raise ImageError(f"cannot read the image file {where}: {e}") from e


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (a new image; the input is untouched)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode == "RGB":
        return image  # nothing to convert; later steps make new images, so the input stays untouched
    return image.convert("RGB")


def resize_shorter_side(image: Image.Image, size: int, resample) -> Image.Image:
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)  # truncated, as transformers and torchvision do
    new = (size, new_long) if width <= height else (new_long, size)
    return image.resize(new, resample=resample)


def crop_offset(side: int, crop: int, rule: str) -> int:
    """Where a centred crop starts: transformers floors (side - crop) / 2; torchvision rounds it half to even.

    A 401x300 photo is resized to 299x224; (299 - 224) / 2 = 37.5 -> 37 (transformers) or 38 (openai, 38 is
    even). For side=297, 36.5 -> 36 both ways.
    """
    return (side - crop) // 2 if rule == "transformers" else int(round((side - crop) / 2.0))


def center_crop(image: Image.Image, crop: int, rule: str) -> Image.Image:
    width, height = image.size
    if width < crop or height < crop:
        # Only when crop_size > size: pad with zeros (black) to the crop, centred, as both references do.
        canvas = Image.new("RGB", (max(width, crop), max(height, crop)), (0, 0, 0))
        canvas.paste(image, (-(-(canvas.width - width) // 2), -(-(canvas.height - height) // 2)))
        image, width, height = canvas, canvas.width, canvas.height
    left, top = crop_offset(width, crop, rule), crop_offset(height, crop, rule)
    return image.crop((left, top, left + crop, top + crop))


DEFAULT = Preprocessor()


def preprocess(images, size: int = 224, crop: str = "transformers") -> torch.Tensor:
    """An image -> (3, size, size); a list of them -> (n, 3, size, size). CLIP's mean and std.

    An image is a path, a PIL image, a uint8 numpy array (H, W, 3), (H, W, 4) or (H, W), or a uint8 tensor
    in torch's layout (3, H, W), (4, H, W) or (1, H, W); a list may mix them. See `as_image`.

    size: the model's input size (224, or 336 for ViT-L/14@336px). crop: "transformers" or "openai", see above.
    """
    processor = DEFAULT if (size, crop) == (224, "transformers") else Preprocessor(size=size, crop_size=size, crop=crop)
    return processor(images)
