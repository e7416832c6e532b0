"""Sizes read off tensor shapes: one function for each inference, shared by every layout.

Shapes determine the widths, depths, vocabulary and context sizes, the patch size and (for a square grid)
the image size. They do not determine the head count, the activation, LayerNorm's eps, the pooling or the
attention mask. Those come from a config file, or from the convention of a layout that has one (OpenAI's:
64-wide heads, quick_gelu, eps 1e-5, as its build_model assumes), never from a guess.
"""

import math

from miniclip.errors import CheckpointError

CONFIG_HINT = (
    "pass the sizes explicitly: config=\"ViT-B/32\" (a preset) or config=CLIPConfig(...), or put the checkpoint's "
    "config file beside the weights"
)


def count_blocks(sd: dict, template: str) -> int:
    """The number of residual blocks: keys template.format(0), template.format(1), ... that exist."""
    n = 0
    while template.format(n) in sd:
        n += 1
    return n


def square_grid(rows: int, name: str) -> int:
    """The side g of a position table with g * g + 1 rows (a square patch grid plus the class token)."""
    g = math.isqrt(max(rows - 1, 0))
    if g * g + 1 != rows:
        raise CheckpointError(
            f"{name} has {rows} rows, not a square grid + 1, so the image size cannot be read off it; {CONFIG_HINT}"
        )
    return g


def heads(width: int, head_width: int, tower: str, convention: str) -> int:
    """width // head_width, refused when head_width does not divide the width.

    `convention` says where head_width came from (a config's head_width, or a layout's rule), for the message.
    """
    if head_width <= 0 or width % head_width:
        raise CheckpointError(
            f"the {tower} tower is {width} wide, which {head_width}-wide heads ({convention}) do not divide, so "
            f"its head count is unknown; {CONFIG_HINT}"
        )
    return width // head_width
