"""Which parts of an image match a text: a relevance map from overlapping windows.

CLIP scores a whole image against a text; it has no notion of where. The simple method the CLIP write-ups
use is to ask it about pieces: cut the image into overlapping square windows at a few scales, embed each
window as an image of its own, take its cosine similarity with the text, and give every pixel the mean
score of the windows that contain it. It needs nothing but `encode_image` and `encode_text`, so it works
for every model and every checkpoint, and a window scores high only if CLIP sees the text in it.
"""

import math

import torch
import torch.nn.functional as F

from .image_processing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, open_image
from .model import CLIP

# Window sides as fractions of the image's shorter side; each scale's windows overlap by half.
SCALES = (1.0, 0.5, 0.33)
OVERLAP = 0.5


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of `window` pixels along `length`, about `stride` apart, covering every pixel.

    The last window is placed flush with the end, so nothing is left over: length=10, window=4, stride=2
    -> [0, 2, 4, 6].
    """
    if window >= length:
        return [0]
    n = math.ceil((length - window) / stride) + 1
    return [round(i * (length - window) / (n - 1)) for i in range(n)]


def windows(height: int, width: int, scales=SCALES) -> list[tuple[int, int, int]]:
    """(top, left, side) of every window, at every scale."""
    out = []
    for scale in scales:
        side = max(1, round(min(height, width) * scale))
        stride = max(1, round(side * (1 - OVERLAP)))
        out += [(top, left, side) for top in window_starts(height, side, stride)
                for left in window_starts(width, side, stride)]
    return out


def image_tensor(image) -> torch.Tensor:
    """A PIL image (or path) -> (3, H, W) float RGB in [0, 1], at its own size."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = open_image(image)
    rgb = image.convert("RGB")
    data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return data.view(rgb.height, rgb.width, 3).permute(2, 0, 1).float() / 255


@torch.no_grad()
def relevance_map(model: CLIP, image, text, scales=SCALES, batch_size: int = 32) -> torch.Tensor:
    """(H, W) map of `image` (PIL image or path, at its own size): each pixel's mean cosine similarity,
    over the windows containing it, between the window and `text` (a string, or a text embedding).
    """
    pixels = image_tensor(image)
    _, height, width = pixels.shape
    text_embed = text if isinstance(text, torch.Tensor) else encode_one_text(model, text)
    text_embed = F.normalize(text_embed.reshape(1, -1).float(), dim=-1)

    boxes = windows(height, width, scales)
    scores = torch.empty(len(boxes))
    for i in range(0, len(boxes), batch_size):
        batch = torch.stack([window_pixels(pixels, box, model.config.vision.image_size) for box in boxes[i:i + batch_size]])
        embeds = model.encode_image(batch.to(model.device, model.dtype)).float().cpu()
        scores[i:i + batch_size] = (F.normalize(embeds, dim=-1) @ text_embed.t()).squeeze(1)

    total, count = torch.zeros(height, width), torch.zeros(height, width)
    for (top, left, side), score in zip(boxes, scores):
        total[top:top + side, left:left + side] += score
        count[top:top + side, left:left + side] += 1
    return total / count  # every pixel is in at least one window (window_starts covers the edges)


def window_pixels(pixels: torch.Tensor, box, size: int) -> torch.Tensor:
    """The window `box` of (3, H, W) pixels in [0, 1], resized to the model's input and normalised as CLIP's
    preprocessing does (bicubic, with antialiasing when shrinking, like Pillow)."""
    top, left, side = box
    crop = pixels[:, top:top + side, left:left + side].unsqueeze(0)
    resized = F.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False, antialias=side > size)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    return (resized[0].clamp(0, 1) - mean) / std


def encode_one_text(model: CLIP, text: str) -> torch.Tensor:
    return model.encode_text(model.tokenize([text], truncate=True))
