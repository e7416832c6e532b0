"""The training augmentation: a random resized crop (Szegedy et al. 2015, "Going deeper with convolutions"),
as torchvision's `RandomResizedCrop` draws it and open_clip trains CLIP with it.

Each image is cropped to a random box, whose area is a random fraction `scale` of the image's and whose
aspect ratio (width / height) is random in `ratio` (log-uniform, so 3/4 and 4/3 are equally likely), and
the box is resized to crop_size x crop_size. This DIFFERS from the evaluation transform (`Preprocessor`),
which resizes the shorter side to `size` and centre-crops, with no randomness: training sees slightly
zoomed, shifted and stretched views of each photo, evaluation always the same centre. After 10 boxes that
do not fit, the crop falls back to the centre: with the default scale (0.9, 1.0) that is every draw for a
photo wider than about 1.48:1 (3:2 and 16:9 included) or taller than 1:1.48, which always gets its centred
4:3 (3:4) box, as in open_clip (a box of aspect a <= 4/3 needs a >= 0.9 * width / height to fit).

Everything else is evaluation's: transparency composited on white (`to_rgb`), the same resampling filter
(bicubic), and the same per-byte lookup table for the normalisation (`Preprocessor.normalise`). With
scale=(1, 1) and ratio=(1, 1) a square image gives exactly the evaluation transform's pixels.

Reproducibility: every random number is drawn from the `torch.Generator` passed in, never from a global
one, so the caller decides what a crop depends on. Seeding one generator per (run seed, step, example)
makes a resumed run see the same crops as an uninterrupted one, whatever the number of data workers.
"""

import math
from dataclasses import dataclass

import torch
from PIL import Image

from ..image_processing import Preprocessor, as_image, open_image, to_rgb

ATTEMPTS = 10  # boxes tried before falling back to a centre crop, as torchvision


@dataclass(frozen=True)
class RandomResizedCrop:
    """A callable: `augment(image, generator) -> (3, crop, crop)` float32, image a PIL image or a path."""

    preprocessor: Preprocessor  # crop_size, resample, mean and std come from here; its `size` is unused
    # open_clip's training default for CLIP (AugmentationCfg.scale); torchvision's own (0.08, 1.0), from
    # ImageNet classifiers, throws away most of a photo, and with it what its caption describes.
    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self):
        check_range("scale", self.scale, "0 < low <= high <= 1", lambda lo, hi: 0 < lo <= hi <= 1)
        check_range("ratio", self.ratio, "0 < low <= high, finite", lambda lo, hi: 0 < lo <= hi < math.inf)

    def __call__(self, image, generator: torch.Generator) -> torch.Tensor:
        """One image (PIL or path) -> (3, crop_size, crop_size) float32. The input image is not modified."""
        image = as_image(image, "image")
        if not isinstance(image, Image.Image):
            image = open_image(image)
        rgb = to_rgb(image)
        return self.resized_crop(rgb, self.box(rgb.width, rgb.height, generator))

    def box(self, width: int, height: int, generator: torch.Generator) -> tuple[int, int, int, int]:
        """A random (left, top, w, h) inside a width x height image, as torchvision's get_params draws it.

        E.g. 640x480, scale (0.9, 1.0), draws 0.95 and aspect 1.1: target area 0.95 * 307200 = 291840,
        w = round(sqrt(291840 * 1.1)) = 567, h = round(sqrt(291840 / 1.1)) = 515 > 480, so another try.
        """
        area = width * height
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(ATTEMPTS):
            target = area * uniform(self.scale[0], self.scale[1], generator)
            aspect = math.exp(uniform(log_lo, log_hi, generator))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                return left, top, w, h
        return self.centre_box(width, height)

    def centre_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The fallback: the largest centred box with its aspect clamped into `ratio`, whatever its area.

        E.g. 1000x10 with ratio (1, 1): 100 > 1, so h = 10, w = 10 * 1 = 10, left = (1000 - 10) // 2 = 495.
        """
        if width / height < self.ratio[0]:  # too tall: keep the width
            w, h = width, round(width / self.ratio[0])
        elif width / height > self.ratio[1]:  # too wide: keep the height
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        w, h = max(w, 1), max(h, 1)  # torchvision can round a 1-pixel side to 0 here; an empty box cannot be resized
        return (width - w) // 2, (height - h) // 2, w, h

    def resized_crop(self, rgb: Image.Image, box: tuple[int, int, int, int]) -> torch.Tensor:
        """An RGB image's (left, top, w, h) box -> (3, crop_size, crop_size) float32.

        One Pillow call crops and resizes (`box=`), so the filter reads the pixels around the box's edges,
        as torchvision's crop-then-resize does not; then evaluation's lookup table normalises.
        """
        left, top, w, h = box
        side = self.preprocessor.crop_size
        crop = rgb.resize((side, side), resample=self.preprocessor.resample, box=(left, top, left + w, top + h))
        pixels = torch.frombuffer(bytearray(crop.tobytes()), dtype=torch.uint8).view(1, side, side, 3)
        return self.preprocessor.normalise(pixels)[0]


def uniform(low: float, high: float, generator: torch.Generator) -> float:
    """One number drawn uniformly in [low, high) (float32, as torchvision draws it) from `generator`."""
    return torch.empty(1).uniform_(low, high, generator=generator).item()


def check_range(name: str, value, expected: str, ok) -> None:
    """A ValueError naming the argument unless `value` is a pair (low, high) of numbers with ok(low, high)."""
    pair = isinstance(value, (tuple, list)) and len(value) == 2
    if not (pair and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) and ok(*value)):
        raise ValueError(f"{name}={value!r}; expected a pair (low, high) with {expected}")
