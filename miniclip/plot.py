"""Pictures of numbers, drawn by matplotlib: a labelled similarity matrix, and a relevance map over a photo.

matplotlib is optional (`pip install "miniclip[plot]"`): it is imported inside the functions, and a missing
one is reported by `check_plot_path`, which a caller runs before computing anything. The figures are drawn
on matplotlib's Agg canvas through `matplotlib.figure.Figure`, never pyplot: no window opens, no backend is
switched and no rcParams are touched, so a caller's own plotting is left as it was.

Two choices make the pictures comparable and readable:
- the similarity matrix has a fixed colour scale, SIMILARITY_RANGE, the same in every plot;
- labels are drawn in DejaVu Sans (shipped with matplotlib; Latin, Greek, Cyrillic, symbols and more), and a
  character it has no glyph for is written as its escape (猫 -> \\u732b) instead of an empty box.
"""

import functools
import os
from pathlib import Path

import torch
from PIL import Image

from .errors import InputError, require

# The similarity matrix's colour scale, in cosine similarity. CLIP's image-text cosines sit in a narrow band
# (about 0.1 for unrelated pairs to 0.35 for close matches with OpenAI's models), so 0..0.4 spreads that band
# over the colour map; values outside it take the end colours, which the colour bar's arrows stand for.
SIMILARITY_RANGE = (0.0, 0.4)
COLOR_MAP = "viridis"  # perceptually uniform, readable in grey and by colour-blind readers
FONT = "DejaVu Sans"
LABEL_MAX_CHARS = 40  # longer labels are shortened with an ellipsis
CELL_INCHES = 0.7  # a matrix cell, in the figure
DPI = 100  # raster formats: pixels per figure inch

# The relevance overlay is drawn at display size: the photo is shrunk to at most DISPLAY_MAX_SIDE pixels on
# its longer side (small photos are enlarged to DISPLAY_MIN_SIDE so the colour bar stays legible), and the
# colour bar takes COLORBAR_PIXELS more to the right. The output is exactly (display width + COLORBAR_PIXELS)
# x display height pixels in raster formats.
DISPLAY_MAX_SIDE = 1024
DISPLAY_MIN_SIDE = 256
COLORBAR_PIXELS = 110
OVERLAY_ALPHA = 0.5  # how much of the map shows over the photo


# -----------------------------------------------------------------------------
# Output paths


def check_plot_path(path) -> str:
    """The format `path` will be written in (from its suffix: png, svg, pdf, jpg, ...), or InputError if
    matplotlib cannot write it (MissingDependencyError if matplotlib is not installed). Cheap: call it before
    the work whose result goes in the plot."""
    require("matplotlib", "plot", "plotting")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in formats:
        found = f"suffix '.{suffix}'" if suffix else "no suffix"
        raise InputError(f"cannot write a plot to {path}: it has {found}; use one of "
                         f"{', '.join('.' + f for f in sorted(formats))}")
    return suffix


def save_figure(figure, path, **options) -> None:
    """Write `figure` to `path` in its suffix's format (`options` go to savefig), through a temporary file in
    the same folder, so an interrupted write never leaves half a file under the real name."""
    fmt = check_plot_path(path)
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if fmt == "png":  # zlib's fastest level: 6x faster than Pillow's default on photos, files ~15% bigger
            options.setdefault("pil_kwargs", {"compress_level": 1})
        figure.savefig(temporary, format=fmt, dpi=DPI, **options)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def new_figure(width_inches: float, height_inches: float):
    """A matplotlib Figure on an Agg canvas of its own: no pyplot, no window, no global state."""
    figure_module = require("matplotlib.figure", "plot", "plotting")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = figure_module.Figure(figsize=(width_inches, height_inches), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


# -----------------------------------------------------------------------------
# Labels


@functools.lru_cache(maxsize=1)
def font_characters() -> frozenset:
    """The code points FONT has a glyph for."""
    require("matplotlib", "plot", "plotting")
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = font_manager.findfont(font_manager.FontProperties(family=FONT), fallback_to_default=True)
    return frozenset(FT2Font(path).get_charmap())


def escaped(char: str) -> str:
    r"""A character as Python escapes it in a string literal: '猫' -> '\u732b', '🐱' -> '\U0001f431',
    a newline -> '\n'."""
    return char.encode("unicode_escape").decode("ascii")


def label_text(text: str, max_chars: int = LABEL_MAX_CHARS, glyphs=None) -> str:
    r"""`text` as it can be drawn in FONT: every character without a glyph (and every control character, such
    as a newline) replaced by its escape, and the result cut to `max_chars` characters with an ellipsis,
    never inside an escape. `glyphs`: the code points the font has (default: FONT's).

    'a cat' -> 'a cat';  'un chat 猫' -> 'un chat \u732b';  'x' * 50 -> 'x' * 39 + '…'.
    """
    glyphs = font_characters() if glyphs is None else glyphs
    pieces = [c if ord(c) in glyphs and c.isprintable() else escaped(c) for c in text]
    if sum(map(len, pieces)) <= max_chars:
        return "".join(pieces)
    out, length = [], 0
    for piece in pieces:
        if length + len(piece) > max_chars - 1:  # room for the ellipsis
            break
        out.append(piece)
        length += len(piece)
    return "".join(out) + "…"


# -----------------------------------------------------------------------------
# The similarity matrix


def save_similarity_plot(values, row_labels: list[str], col_labels: list[str], path) -> None:
    """The (rows x cols) cosine-similarity matrix `values` (images x texts) as a heatmap written to `path`
    (format from its suffix): each cell's value written in it, the image labels on the left, the text labels
    on top, and a colour bar with the fixed scale SIMILARITY_RANGE (values beyond it take the end colours)."""
    check_plot_path(path)
    data = torch.as_tensor(values).detach().float().cpu().numpy()
    rows, cols = len(row_labels), len(col_labels)
    if data.shape != (rows, cols):
        raise InputError(f"the matrix is {tuple(data.shape)}; the labels say ({rows}, {cols}) (images, texts)")
    figure = new_figure(2.5 + CELL_INCHES * cols, 1.5 + CELL_INCHES * rows)  # the tight bbox trims the rest
    axes = figure.add_subplot()
    low, high = SIMILARITY_RANGE
    shown = axes.imshow(data, cmap=COLOR_MAP, vmin=low, vmax=high, aspect="equal", interpolation="nearest")
    for r in range(rows):
        for c in range(cols):
            shade = (data[r, c] - low) / (high - low)
            axes.text(c, r, f"{data[r, c]:.2f}", ha="center", va="center", fontfamily=FONT, fontsize=9,
                      color="black" if shade > 0.6 else "white")  # readable on viridis' light and dark ends
    axes.set_yticks(range(rows), [label_text(t) for t in row_labels], fontfamily=FONT)
    axes.set_xticks(range(cols), [label_text(t) for t in col_labels], fontfamily=FONT, rotation=45, ha="left",
                    rotation_mode="anchor")
    axes.tick_params(top=True, labeltop=True, bottom=False, labelbottom=False, length=0)
    bar = figure.colorbar(shown, ax=axes, extend="both", shrink=min(1.0, 0.3 + 0.15 * rows))
    bar.set_label(f"cosine similarity (fixed scale {low:g} to {high:g})", fontfamily=FONT)
    save_figure(figure, path, bbox_inches="tight", pad_inches=0.1)  # cropped to what is drawn: labels vary


# -----------------------------------------------------------------------------
# The relevance map over a photo


def display_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) the photo is drawn at: its longer side brought into [DISPLAY_MIN_SIDE, DISPLAY_MAX_SIDE],
    the aspect ratio kept: 8000x6000 -> (1024, 768); 640x480 -> (640, 480); 100x50 -> (256, 128)."""
    longest = max(width, height)
    target = min(max(longest, DISPLAY_MIN_SIDE), DISPLAY_MAX_SIDE)
    if target == longest:
        return width, height
    return max(1, round(width * target / longest)), max(1, round(height * target / longest))


def display_photo(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` as RGB at `size`. Shrinking a big photo starts with Pillow's box `reduce` by an integer factor
    (reducing_gap), which reads each pixel once; the bicubic filter then runs on an image two to four times
    the display size: about 0.25 s for 8000x8000, where the filter on all its pixels takes 0.7 s."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if rgb.size == size:
        return rgb
    return rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)


def display_map(values: torch.Tensor, size: tuple[int, int]):
    """The (h, w) map resampled to the display `size` (width, height), bilinear (antialiased, so averaging,
    when shrinking); as a float32 numpy array."""
    width, height = size
    values = values.detach().float().cpu()
    if tuple(values.shape) != (height, width):
        values = torch.nn.functional.interpolate(values[None, None], size=(height, width), mode="bilinear",
                                                 align_corners=False, antialias=True)[0, 0]
    return values.numpy()


def save_heatmap_overlay(image: Image.Image, values: torch.Tensor, path) -> None:
    """`image` (a PIL image) with the relevance map `values` blended over it, and a colour bar, written to
    `path` (format from its suffix).

    `values`: an (h, w) map with the image's aspect ratio (to within a pixel), at any resolution: the image's
    own size or `relevance_map`'s reduced one. Drawn at `display_size` (at most DISPLAY_MAX_SIDE pixels on
    the longer side), so the time does not grow with the photo's size: about half a second, 8000x8000 included.
    The colour scale runs from the map's lowest value to its highest: the colours say where in this photo
    the text matches best, and the colour bar's labels give those ends as cosine similarities (the mean over
    the windows covering a point), which are what compare across photos.
    """
    check_plot_path(path)  # also: matplotlib is there, so it can be imported below
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    values = torch.as_tensor(values)
    check_map_shape(values, image)
    size = display_size(image.width, image.height)
    photo, heat = display_photo(image, size), display_map(values, size)
    low, high = float(heat.min()), float(heat.max())
    scale = Normalize(vmin=low, vmax=high if high > low else low + 1e-6)  # a constant map: any valid scale
    shades = colormaps[COLOR_MAP](scale(heat), bytes=True)[..., :3]  # (height, width, 3) uint8
    # Blended once, in Pillow: matplotlib then only copies pixels, one image pixel per output pixel.
    blended = Image.blend(photo, Image.fromarray(shades, "RGB"), OVERLAY_ALPHA)

    width, height = size
    total = width + COLORBAR_PIXELS
    figure = new_figure(total / DPI, height / DPI)
    axes = figure.add_axes((0, 0, width / total, 1))  # the photo fills exactly its own pixels
    axes.set_axis_off()
    axes.imshow(blended, interpolation="nearest")
    bar = figure.colorbar(ScalarMappable(scale, COLOR_MAP), cax=figure.add_axes(((width + 8) / total, 0.05,
                                                                                    14 / total, 0.9)))
    ticks = [scale.vmin + (scale.vmax - scale.vmin) * i / 4 for i in range(5)]  # the ends labelled too
    bar.set_ticks(ticks, labels=[f"{t:.3f}" for t in ticks], fontsize=8)
    bar.set_label("cosine similarity", fontfamily=FONT, fontsize=8)
    save_figure(figure, path)


def check_map_shape(values: torch.Tensor, image: Image.Image) -> None:
    """InputError unless `values` is a 2-d map with the image's aspect ratio, to within a map pixel."""
    if values.dim() != 2:
        raise InputError(f"the map has shape {tuple(values.shape)}; expected (height, width)")
    h, w = values.shape
    if abs(h * image.width - w * image.height) > max(image.width, image.height):  # more than a map pixel off
        raise InputError(f"the map is {h}x{w} (h x w) but the image is {image.height}x{image.width}: not the "
                         "same aspect ratio")
