"""Pictures of numbers, with Pillow only: a labelled similarity matrix and a heatmap over an image.

No plotting library: a colour map is a few linear segments, text is Pillow's default font.
"""

import torch
from PIL import Image, ImageDraw, ImageFont

# A viridis-like colour map: (position in [0, 1], RGB), linearly interpolated in between.
COLOR_STOPS = [(0.0, (68, 1, 84)), (0.25, (59, 82, 139)), (0.5, (33, 145, 140)), (0.75, (94, 201, 98)),
               (1.0, (253, 231, 37))]

CELL = 64  # pixels per matrix cell
LABEL_SPACE = 160  # pixels for the row labels (left) and the column labels (top, written upwards)
FONT_SIZE = 12


def colorize(values: torch.Tensor) -> torch.Tensor:
    """Values in [0, 1], any shape -> uint8 RGB, shape (..., 3), through COLOR_STOPS."""
    positions = torch.tensor([p for p, _ in COLOR_STOPS])
    colors = torch.tensor([c for _, c in COLOR_STOPS], dtype=torch.float32)
    v = values.clamp(0, 1).float()
    hi = torch.searchsorted(positions, v.contiguous(), right=False).clamp(1, len(COLOR_STOPS) - 1)
    lo = hi - 1
    t = ((v - positions[lo]) / (positions[hi] - positions[lo])).unsqueeze(-1)
    return (colors[lo] * (1 - t) + colors[hi] * t).round().to(torch.uint8)


def rescale(values: torch.Tensor) -> torch.Tensor:
    """Min-max to [0, 1] (a constant map becomes all 0.5)."""
    lo, hi = values.min(), values.max()
    return torch.full_like(values, 0.5) if hi <= lo else (values - lo) / (hi - lo)


def fit(text: str, width: int, draw: ImageDraw.ImageDraw, font) -> str:
    """`text`, shortened with an ellipsis until it is at most `width` pixels wide."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def matrix_plot(values: torch.Tensor, row_labels: list[str], col_labels: list[str]) -> Image.Image:
    """A heatmap of `values` (rows x cols) with each cell's value written in it.

    The image is exactly (LABEL_SPACE + CELL * cols) x (LABEL_SPACE + CELL * rows) pixels.
    """
    rows, cols = values.shape
    font = ImageFont.load_default(FONT_SIZE)
    image = Image.new("RGB", (LABEL_SPACE + CELL * cols, LABEL_SPACE + CELL * rows), "white")
    draw = ImageDraw.Draw(image)
    shades = rescale(values)
    colors = colorize(shades)
    for r in range(rows):
        for c in range(cols):
            x, y = LABEL_SPACE + c * CELL, LABEL_SPACE + r * CELL
            draw.rectangle([x, y, x + CELL - 1, y + CELL - 1], fill=tuple(colors[r, c].tolist()))
            ink = "black" if shades[r, c] > 0.5 else "white"  # readable on light and dark cells
            draw.text((x + CELL / 2, y + CELL / 2), f"{values[r, c]:.2f}", fill=ink, font=font, anchor="mm")
    for r, label in enumerate(row_labels):
        draw.text((LABEL_SPACE - 6, LABEL_SPACE + r * CELL + CELL / 2), fit(label, LABEL_SPACE - 12, draw, font),
                  fill="black", font=font, anchor="rm")
    for c, label in enumerate(col_labels):  # written upwards, on a strip rotated into place
        strip = Image.new("L", (LABEL_SPACE, CELL), 0)
        strip_draw = ImageDraw.Draw(strip)
        strip_draw.text((6, CELL / 2), fit(label, LABEL_SPACE - 12, strip_draw, font), fill=255, font=font,
                        anchor="lm")
        strip = strip.rotate(90, expand=True)  # now CELL wide, LABEL_SPACE tall, reading bottom to top
        image.paste((0, 0, 0), (LABEL_SPACE + c * CELL, 0), mask=strip)
    return image


def heatmap_overlay(image: Image.Image, values: torch.Tensor, alpha: float = 0.5) -> Image.Image:
    """`image` with `values` ([H, W], the image's size) blended over it as a heatmap."""
    rgb = image.convert("RGB")
    if tuple(values.shape) != (rgb.height, rgb.width):
        raise ValueError(f"the map is {tuple(values.shape)}; the image is {(rgb.height, rgb.width)} (H, W)")
    heat = Image.frombytes("RGB", rgb.size, tensor_bytes(colorize(rescale(values))))
    return Image.blend(rgb, heat, alpha)


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor (row-major), for Image.frombytes, without going through numpy."""
    return bytes(t.clone(memory_format=torch.contiguous_format).untyped_storage())  # clone: exactly t's bytes
