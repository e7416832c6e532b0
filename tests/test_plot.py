"""miniclip.plot: the similarity matrix and the relevance overlay, drawn by matplotlib (an optional extra).

What is checked: each format is written as its suffix says (by the file's magic bytes); the overlay is drawn at
the display size whatever the photo's size, in well under the time a full-resolution copy takes; labels never
reach matplotlib with a character the font has no glyph for (matplotlib's own "Glyph ... missing" warning is
turned into an error to prove it); a missing matplotlib or an unwritable suffix is one clear error, raised
before any work.
"""

import subprocess
import sys
import time
import warnings

import pytest
import torch
from PIL import Image

from miniclip import plot
from miniclip.errors import InputError, MissingDependencyError

pytest.importorskip("matplotlib")

MAGIC = {"png": b"\x89PNG", "jpg": b"\xff\xd8\xff", "jpeg": b"\xff\xd8\xff", "pdf": b"%PDF", "svg": b"<svg",
         "tiff": b"II*\x00", "webp": b"RIFF"}
SIMS = torch.tensor([[0.31, 0.12, -0.05], [0.22, 0.45, 0.18]])  # two beyond the fixed 0..0.4 scale


def written_as(path, fmt: str) -> bool:
    head = path.read_bytes()[:4096]
    return MAGIC[fmt] in head if fmt == "svg" else head.startswith(MAGIC[fmt])


def photo(width: int, height: int) -> Image.Image:
    """A smooth RGB test photo of any size, made in Pillow (cheap even at 8000x8000)."""
    ramp = Image.linear_gradient("L")  # 256x256, dark at the top
    return Image.merge("RGB", [ramp.resize((width, height)), ramp.rotate(90).resize((width, height)),
                               Image.new("L", (width, height), 128)])


def relevance_like(height: int, width: int) -> torch.Tensor:
    """A map peaked at a third of the way across and down, in CLIP's narrow range of cosines."""
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    return 0.2 + 0.1 * torch.exp(-((x - 1 / 3) ** 2 + (y - 1 / 3) ** 2) / 0.05)


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf", "jpg", "tiff", "webp"])
def test_similarity_plot_is_written_in_the_suffix_format(tmp_path, fmt):
    path = tmp_path / f"matrix.{fmt}"
    plot.save_similarity_plot(SIMS, ["cat.jpg", "dog.jpg"], ["a cat", "a dog", "a car"], path)
    assert written_as(path, fmt)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the temporary file is gone


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf", "jpeg"])
def test_heatmap_overlay_is_written_in_the_suffix_format(tmp_path, fmt):
    path = tmp_path / f"map.{fmt.upper()}"  # suffixes are read case-blind
    plot.save_heatmap_overlay(photo(90, 60), relevance_like(60, 90), path)
    assert written_as(path, fmt)


@pytest.mark.parametrize("size,shown", [
    ((300, 200), (300, 200)),  # between the limits: drawn pixel for pixel
    ((2000, 1500), (1024, 768)),  # shrunk to DISPLAY_MAX_SIDE on the longer side
    ((100, 50), (256, 128)),  # enlarged to DISPLAY_MIN_SIDE, so the colour bar stays legible
    ((30, 1800), (17, 1024)),  # tall and thin: 30 * 1024 / 1800 = 17.07
])
def test_overlay_is_drawn_at_the_display_size(tmp_path, size, shown):
    assert plot.display_size(*size) == shown
    path = tmp_path / "map.png"
    width, height = size
    plot.save_heatmap_overlay(photo(width, height), relevance_like(height, width), path)
    with Image.open(path) as image:  # the photo's pixels, then the colour bar's strip on the right
        assert image.size == (shown[0] + plot.COLORBAR_PIXELS, shown[1])


def test_overlay_takes_a_map_at_any_resolution_with_the_photo_aspect(tmp_path):
    image = photo(800, 600)
    plot.save_heatmap_overlay(image, relevance_like(75, 100), tmp_path / "small_map.png")  # relevance_map's max_side
    plot.save_heatmap_overlay(image, relevance_like(600, 800), tmp_path / "full_map.png")
    with Image.open(tmp_path / "small_map.png") as a, Image.open(tmp_path / "full_map.png") as b:
        assert a.size == b.size == (800 + plot.COLORBAR_PIXELS, 600)
    with pytest.raises(InputError, match="aspect ratio"):
        plot.save_heatmap_overlay(image, relevance_like(100, 100), tmp_path / "square.png")
    with pytest.raises(InputError, match="expected \\(height, width\\)"):
        plot.save_heatmap_overlay(image, torch.zeros(3, 75, 100), tmp_path / "three.png")


def test_overlay_blends_the_map_over_the_photo(tmp_path):
    # A grey photo and a map that is high on the left half: left and right come out in different colours,
    # and both still carry the photo (alpha 0.5): neither is the bare photo's grey.
    image = Image.new("RGB", (200, 100), (128, 128, 128))
    values = torch.full((100, 200), 0.1)
    values[:, :100] = 0.3
    plot.save_heatmap_overlay(image, values, tmp_path / "map.png")
    with Image.open(tmp_path / "map.png") as out:
        left, right = out.getpixel((50, 50)), out.getpixel((150, 50))
    assert left != right and (128, 128, 128) not in (left[:3], right[:3])


def test_overlay_of_a_huge_photo_is_fast(tmp_path):
    # The case: 8000x8000 took 378 s with a byte-by-byte full-resolution copy. The real figure is in
    # benchmarks/relevance.py; this is a loose smoke bound for a loaded 2-core machine.
    image = photo(8000, 8000)
    values = relevance_like(1024, 1024)
    plot.save_heatmap_overlay(photo(64, 64), relevance_like(64, 64), tmp_path / "warm.png")  # imports, fonts
    start = time.perf_counter()
    plot.save_heatmap_overlay(image, values, tmp_path / "map.png")
    seconds = time.perf_counter() - start
    assert seconds < 3, f"the overlay of an 8000x8000 photo took {seconds:.2f} s"
    with Image.open(tmp_path / "map.png") as out:
        assert out.size == (1024 + plot.COLORBAR_PIXELS, 1024)


# -----------------------------------------------------------------------------
# Labels


def test_characters_without_a_glyph_are_escaped():
    glyphs = {ord(c) for c in "a cat"}  # a font that has only these
    assert plot.label_text("a cat", glyphs=glyphs) == "a cat"
    assert plot.label_text("a 猫", glyphs=glyphs) == "a \\u732b"
    assert plot.label_text("a 🐱", glyphs=glyphs) == "a \\U0001f431"
    assert plot.label_text("a\ncat", glyphs=glyphs) == "a\\ncat"  # control characters: never drawn raw


def test_dejavu_sans_escapes_cjk_and_keeps_what_it_has():
    assert plot.label_text("un chat 猫") == "un chat \\u732b"  # DejaVu Sans has no CJK
    assert plot.label_text("κάτι, кошка, ☺") == "κάτι, кошка, ☺"  # but Greek, Cyrillic and symbols


def test_long_labels_end_in_an_ellipsis_never_inside_an_escape():
    assert plot.label_text("x" * 40) == "x" * 40
    assert plot.label_text("x" * 41) == "x" * 39 + "…"
    # 猫 becomes 6 characters (\u732b): 6 of them fill 36, a 7th would pass the 39 before the ellipsis
    assert plot.label_text("猫" * 10) == "\\u732b" * 6 + "…"
    assert len(plot.label_text("a very long caption " * 10)) == plot.LABEL_MAX_CHARS


def test_unicode_labels_draw_without_missing_glyphs(tmp_path):
    # matplotlib warns "Glyph ... missing from font(s)" when it would draw an empty box (tofu): an error here.
    labels = ["猫.jpg", "🦜 parrot", "κάτι", "naïve café"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        plot.save_similarity_plot(torch.rand(4, 2) * 0.4, labels, ["一只猫", "un chat 🐈\u200d⬛"],
                                  tmp_path / "matrix.png")


def test_raw_cjk_would_be_tofu(tmp_path):
    # The check above can fail: drawn raw, 猫 gets matplotlib's missing-glyph warning.
    figure = plot.new_figure(2, 1)
    figure.text(0.1, 0.5, "猫", fontfamily=plot.FONT)
    with pytest.warns(UserWarning, match="missing from font"):
        figure.savefig(tmp_path / "tofu.png")


# -----------------------------------------------------------------------------
# Errors, before any work


@pytest.mark.parametrize("name,words", [("plot.txt", "suffix '.txt'"), ("plot", "no suffix"),
                                        ("plot.png.bak", "suffix '.bak'")])
def test_unwritable_suffixes_are_one_line_errors(name, words):
    with pytest.raises(InputError) as error:
        plot.check_plot_path(name)
    message = str(error.value)
    assert words in message and ".png" in message and ".svg" in message and "\n" not in message
    assert isinstance(error.value, ValueError)


def test_suffixes_give_the_format():
    assert [plot.check_plot_path(p) for p in ("a.png", "b.SVG", "c.pdf", "d.jpeg")] == ["png", "svg", "pdf", "jpeg"]


def test_a_wrong_suffix_fails_before_drawing(tmp_path, monkeypatch):
    monkeypatch.setattr(plot, "new_figure", lambda *a: pytest.fail("drew before checking the path"))
    with pytest.raises(InputError):
        plot.save_similarity_plot(SIMS, ["a", "b"], ["x", "y", "z"], tmp_path / "matrix.txt")
    with pytest.raises(InputError):
        plot.save_heatmap_overlay(photo(20, 10), relevance_like(10, 20), tmp_path / "map.doc")
    assert list(tmp_path.iterdir()) == []


def test_the_matrix_must_match_its_labels(tmp_path):
    with pytest.raises(InputError, match=r"the matrix is \(2, 3\); the labels say \(3, 3\)"):
        plot.save_similarity_plot(SIMS, ["a", "b", "c"], ["x", "y", "z"], tmp_path / "matrix.png")


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` sees when it is not installed
    with pytest.raises(MissingDependencyError, match=r'pip install "miniclip\[plot\]"'):
        plot.check_plot_path("matrix.png")


def test_missing_matplotlib_in_a_fresh_process(tmp_path):
    # Nothing imported yet: the import inside the function is the one that fails, and nothing is written.
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import torch; from miniclip import plot\n"
            "try:\n"
            f"    plot.save_similarity_plot(torch.zeros(1, 1), ['a'], ['b'], {str(tmp_path / 'm.png')!r})\n"
            "except ImportError as e:\n"
            "    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.stdout.startswith("MissingDependencyError plotting needs matplotlib"), out.stderr
    assert list(tmp_path.iterdir()) == []


def test_no_global_matplotlib_state_is_touched(tmp_path):
    import matplotlib

    backend, params = matplotlib.get_backend(), dict(matplotlib.rcParams)
    plot.save_similarity_plot(SIMS, ["a", "b"], ["x", "y", "z"], tmp_path / "matrix.png")
    plot.save_heatmap_overlay(photo(20, 10), relevance_like(10, 20), tmp_path / "map.png")
    assert matplotlib.get_backend() == backend and dict(matplotlib.rcParams) == params
    assert "matplotlib.pyplot" not in sys.modules or sys.modules["matplotlib.pyplot"].get_fignums() == []
