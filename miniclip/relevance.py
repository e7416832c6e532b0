"""Which parts of an image match a text: a relevance map from overlapping windows.

CLIP scores a whole image against a text; it has no notion of where. The simple method the CLIP write-ups
use is to ask it about pieces: cut the image into overlapping square windows at a few scales, embed each
window as an image of its own, take its cosine similarity with the text, and give every pixel the mean
score of the windows that contain it. It needs nothing but `encode_image` and `encode_text`, so it works
for every model and every checkpoint, and a window scores high only if CLIP sees the text in it.

Cost on a big photo. Each window is shrunk to the model's input by Pillow, on uint8 pixels, byte for byte
as CLIP's preprocessing treats that window as a photo of its own; the photo is never turned into a float
tensor (an 8000x8000 one would be 768 MB, and its windows' float copies more). Pillow resizes in two
passes, each row first, then each column, so windows in the same column band share the first, costly pass
(on full-resolution rows): it runs once per band, which on 8000x8000 is 287 Mpixels instead of 459.
The map is a mean of window scores, so it is constant between window edges: it is computed at most
`max_side` pixels on its longer side (sampled at the centres of the map's pixels), full size only for
photos no bigger than that.
"""

import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from PIL import Image

from .errors import InputError
from .image_processing import MAX_THREADS, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Preprocessor, open_image, to_rgb
from .model import CLIP

# Window sides as fractions of the image's shorter side; each scale's windows overlap by half.
SCALES = (1.0, 0.5, 0.33)
OVERLAP = 0.5
# The map's longer side, at most: the smallest window is a third of the shorter side, so 1024 map pixels
# still put a window's edge within 1/300 of it; also the overlay's display size (miniclip.plot).
MAP_MAX_SIDE = 1024
ROWS_PER_PIECE = 512  # rows of the photo copied at a time while windows are resized (see band_windows)


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
    """(top, left, side) of every window, at every scale, in the image's pixels; column by column, so the
    windows of a column band come one after another (and in the same batch, mostly)."""
    out = []
    for scale in scales:
        side = max(1, round(min(height, width) * scale))
        stride = max(1, round(side * (1 - OVERLAP)))
        out += [(top, left, side) for left in window_starts(width, side, stride)
                for top in window_starts(height, side, stride)]
    return out


def map_size(height: int, width: int, max_side: int | None = MAP_MAX_SIDE) -> tuple[int, int]:
    """(h, w) of the map `relevance_map` returns for an image of height x width: the image's own size when its
    longer side is at most `max_side` (or max_side is None), else scaled down to max_side on the longer side,
    the shorter rounded: 8000x6000 (W x H) -> (768, 1024); 120x80 -> (80, 120)."""
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


@torch.no_grad()
def relevance_map(model: CLIP, image, text, scales=SCALES, batch_size: int = 32,
                  max_side: int | None = MAP_MAX_SIDE, progress: bool = False) -> torch.Tensor:
    """(h, w) float32 map of `image` (PIL image or path): each point's mean cosine similarity, over the
    windows containing it, between the window and `text` (a string, or a text embedding).

    (h, w) = `map_size(H, W, max_side)`: the image's (H, W) for images up to `max_side` pixels on the longer
    side, else that size scaled down (map pixel (i, j) then holds the value at image pixel
    (floor((i + 0.5) * H / h), floor((j + 0.5) * W / w)), the centre of the area it covers). max_side=None:
    always full size (for a huge photo that is H * W * 4 bytes, twice while it is summed).
    progress: a tqdm bar over the windows on stderr, shown if the job takes more than a second.
    """
    if not isinstance(image, Image.Image):
        image = open_image(image)
    image = to_rgb(image)  # as preprocessing does; an RGB image is used as it is, not copied
    if not scales or not all(0 < s <= 1 for s in scales):
        raise InputError(f"scales={tuple(scales)}; expected window sides as fractions of the shorter side, in (0, 1]")
    text_embed = text if isinstance(text, torch.Tensor) else encode_one_text(model, text)
    text_embed = F.normalize(text_embed.reshape(1, -1).float().cpu(), dim=-1)  # scores are taken on the CPU

    boxes = windows(image.height, image.width, scales)
    scores = window_scores(model, image, boxes, text_embed, batch_size, progress)
    return accumulate(boxes, scores, image.height, image.width, map_size(image.height, image.width, max_side))


def window_scores(model: CLIP, image: Image.Image, boxes, text_embed: torch.Tensor, batch_size: int,
                  progress: bool) -> torch.Tensor:
    """The cosine similarity of each window with the (normalised, (1, D)) text embedding, batch by batch."""
    from tqdm.auto import tqdm

    size = model.config.vision.image_size
    processor = Preprocessor(size=size, crop_size=size, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    scores = torch.empty(len(boxes))
    # Pillow releases the GIL while it resizes; each thread copies ROWS_PER_PIECE rows of the photo at a time,
    # however many windows a batch holds.
    threads = min(len(boxes), os.cpu_count() or 1, MAX_THREADS)
    with ThreadPoolExecutor(threads) as pool, tqdm(total=len(boxes), unit="window", delay=1, file=sys.stderr,
                                                   disable=not progress, desc="relevance") as bar:
        for i in range(0, len(boxes), batch_size):
            batch = boxes[i:i + batch_size]
            crops = window_bytes(image, batch, size, pool)
            pixels = processor.normalise(torch.frombuffer(bytearray().join(crops), dtype=torch.uint8)
                                         .view(len(batch), size, size, 3))
            embeds = model.encode_image(pixels.to(model.device, model.dtype)).float().cpu()
            scores[i:i + batch_size] = (F.normalize(embeds, dim=-1) @ text_embed.t()).squeeze(1)
            bar.update(len(batch))
    return scores


def window_bytes(image: Image.Image, boxes, size: int, pool=None) -> list[bytes]:
    """Each window (top, left, side) of an RGB image preprocessed as a photo of its own: a square, so
    resized straight to size x size with Pillow's bicubic filter (antialiased when shrinking): RGB bytes.

    The windows are grouped by column band (left, side); the bands are shared out to `pool`'s threads if given.
    """
    bands: dict[tuple[int, int], list[int]] = {}
    for i, (_, left, side) in enumerate(boxes):
        bands.setdefault((left, side), []).append(i)
    jobs = [(left, side, [boxes[i][0] for i in members]) for (left, side), members in bands.items()]
    run = pool.map if pool is not None else map
    out = [b""] * len(boxes)
    for members, crops in zip(bands.values(), run(lambda job: band_windows(image, *job, size), jobs)):
        for i, crop in zip(members, crops):
            out[i] = crop
    return out


def band_windows(image: Image.Image, left: int, side: int, tops: list[int], size: int) -> list[bytes]:
    """The windows (top, left, side), for each top, of one column band, resized to size x size.

    Pillow's resize is two passes, rows then columns, with bytes in between; so the row pass on the band's
    rows (once) followed by the column pass on each window's rows gives every window's bytes exactly as
    `image.crop(window).resize(...)` does (tests/test_relevance.py checks it byte for byte). The row pass
    reads each row alone, so it runs on ROWS_PER_PIECE rows at a time: only that much of the photo is
    ever copied (8 MB at 4000 pixels wide), not the band (122 MB).
    """
    first, last = min(tops), max(tops) + side  # the rows any window of the band covers
    rows_done = Image.new("RGB", (size, last - first))
    for y in range(first, last, ROWS_PER_PIECE):
        piece = image.crop((left, y, left + side, min(y + ROWS_PER_PIECE, last)))
        rows_done.paste(piece.resize((size, piece.height), Image.Resampling.BICUBIC), (0, y - first))  # rows only
    windows_rows = (rows_done.crop((0, top - first, size, top - first + side)) for top in tops)
    return [rows.resize((size, size), Image.Resampling.BICUBIC).tobytes() for rows in windows_rows]  # column pass


def accumulate(boxes, scores: torch.Tensor, height: int, width: int, size: tuple[int, int]) -> torch.Tensor:
    """The mean score of the windows over each sample point of an (h, w) = `size` map of a height x width image.

    A window covers a rectangle, so it is an outer product of a row mask and a column mask, and the sums
    over all windows are one matrix product each: total = rows^T (scores * cols), count = rows^T cols.
    """
    h, w = size
    ys = ((torch.arange(h, dtype=torch.float64) + 0.5) * height / h).floor()  # each map row's image row
    xs = ((torch.arange(w, dtype=torch.float64) + 0.5) * width / w).floor()
    tops, lefts, sides = (torch.tensor(v, dtype=torch.float64).unsqueeze(1) for v in zip(*boxes))  # (n, 1) each
    rows = ((ys >= tops) & (ys < tops + sides)).float()  # (n, h): which map rows each window covers
    cols = ((xs >= lefts) & (xs < lefts + sides)).float()  # (n, w)
    total = rows.t() @ (scores.unsqueeze(1) * cols)
    count = rows.t() @ cols
    return total / count  # every point is in at least one window (window_starts covers the edges)


def encode_one_text(model: CLIP, text: str) -> torch.Tensor:
    return model.encode_text(model.tokenize([text], truncate=True))
