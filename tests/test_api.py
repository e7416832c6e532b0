"""The public API and the command line: load, zero-shot classification, image files to logits end to end,
and every CLI command run in a subprocess on generated checkpoints and images."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from compare import assert_close
from conftest import HUB_REPO
from PIL import Image

import miniclip
from miniclip.plot import CELL, LABEL_SPACE

# Texts on which transformers' tokenizer agrees with OpenAI's (plain lower-case ASCII, no entities).
TEXTS = ["a photo of a cat", "a photo of a dog", "two cats sleeping on a pink couch"]


def make_image(path: Path, size, seed: int) -> Path:
    """A smooth random RGB image (a coarse noise grid, upsampled), saved as PNG or JPEG by suffix."""
    g = torch.Generator().manual_seed(seed)
    coarse = (torch.rand(4, 5, 3, generator=g) * 255).to(torch.uint8)
    image = Image.frombytes("RGB", (5, 4), bytes(coarse.flatten().tolist())).resize(size, Image.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    sizes = [(64, 48), (40, 90), (33, 33), (120, 60)]
    return [make_image(folder / f"photo{i}.{'png' if i % 2 else 'jpg'}", s, seed=i) for i, s in enumerate(sizes)]


def test_available_models():
    names = miniclip.available_models()
    for name in ("ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px", "openai/clip-vit-base-patch32"):
        assert name in names


def test_load_binds_preprocessing_to_the_checkpoint(tiny_dir):
    model, preprocess = miniclip.load(tiny_dir)
    assert not model.training
    assert preprocess(Image.new("RGB", (50, 70))).shape == (3, 32, 32)  # the tiny model's input size


def test_load_by_openai_name_from_the_hub_cache(hub_cache, b32_ref, photos):
    model, preprocess = miniclip.load("ViT-B/32")  # preprocessor_config.json from the cached repository
    pixels = preprocess(photos)
    assert pixels.shape == (4, 3, 224, 224)
    with torch.no_grad():
        assert_close(model.encode_image(pixels), b32_ref.get_image_features(pixel_values=pixels).pooler_output,
                     atol=1e-5, rtol=1e-5, what="image embeddings")


@torch.no_grad()
def test_end_to_end_matches_transformers_pipeline(hub_cache, b32_ref, photos):
    # Image files + texts -> logits_per_image, against transformers' Pillow processor + tokenizer + CLIPModel
    # reading the same cached checkpoint folder.
    from transformers import CLIPImageProcessorPil, CLIPTokenizerFast

    snapshot = next((hub_cache / "models--openai--clip-vit-base-patch32" / "snapshots").iterdir())
    processor = CLIPImageProcessorPil.from_pretrained(snapshot)
    tokenizer = CLIPTokenizerFast.from_pretrained(snapshot)
    images = [Image.open(p) for p in photos]
    theirs = b32_ref(pixel_values=processor(images, return_tensors="pt")["pixel_values"],
                     input_ids=tokenizer(TEXTS, padding=True, return_tensors="pt")["input_ids"]).logits_per_image

    model, preprocess = miniclip.load(HUB_REPO)
    ours, _ = model(preprocess(photos), miniclip.tokenize(TEXTS))
    assert_close(ours, theirs, atol=1e-4, rtol=1e-5, what="logits_per_image, files to answers")


@torch.no_grad()
def test_zero_shot_probabilities_equal_a_hand_computed_softmax(tiny_dir):
    model, preprocess = miniclip.load(tiny_dir)
    labels, templates = ["cat", "dog", "red car"], ["a photo of a {}.", "a drawing of a {}.", "{}"]
    classifier = miniclip.zero_shot_classifier(model, labels, templates)
    image_embeds = model.encode_image(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))

    # by hand, one text at a time: w_label = normalise(mean over templates of normalise(text embedding))
    weights = []
    for label in labels:
        embeds = [F.normalize(model.encode_text(miniclip.tokenize(t.format(label)))[0], dim=0) for t in templates]
        weights.append(F.normalize(sum(embeds) / len(embeds), dim=0))
    logits = 100 * F.normalize(image_embeds, dim=-1) @ torch.stack(weights).t()  # logit_scale.exp() = 100
    expected = logits.exp() / logits.exp().sum(dim=-1, keepdim=True)
    assert_close(classifier(image_embeds), expected, atol=1e-5, rtol=1e-5, what="zero-shot probabilities")
    assert classifier.labels == labels and classifier.weights.shape == (3, 16)


def test_zero_shot_default_template_is_the_papers(tiny_dir):
    model, _ = miniclip.load(tiny_dir)
    default = miniclip.zero_shot_classifier(model, ["cat", "dog"])
    explicit = miniclip.zero_shot_classifier(model, ["cat", "dog"], ["a photo of a {}."])
    assert torch.equal(default.weights, explicit.weights)
    with pytest.raises(ValueError, match="exactly one"):
        miniclip.zero_shot_classifier(model, ["cat"], ["no slot here"])
    with pytest.raises(ValueError, match="labels is empty"):
        miniclip.zero_shot_classifier(model, [])


# -----------------------------------------------------------------------------
# The command line, in subprocesses


def run_cli(*args, cache: Path, check=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    result = subprocess.run([sys.executable, "-m", "miniclip.cli", *map(str, args)], env=env, capture_output=True,
                            text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def empty_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("empty_hf_cache")


def test_cli_classify_prints_every_label_best_first(tiny_dir, photos, empty_cache):
    out = run_cli("classify", photos[0], photos[1], "--label", "cat", "dog", "a red car", "--model", tiny_dir,
                  cache=empty_cache).stdout
    lines = out.splitlines()
    assert lines[0] == str(photos[0]) and lines[4] == str(photos[1])
    for block in (lines[1:4], lines[5:8]):
        probs = [float(line.split()[0]) for line in block]
        assert sorted(probs, reverse=True) == probs and abs(sum(probs) - 1) < 1e-3
        assert {line.split(maxsplit=1)[1] for line in block} == {"cat", "dog", "a red car"}


def test_cli_embed_writes_what_encode_image_gives(tiny_dir, photos, empty_cache, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "embeds.safetensors"
    result = run_cli("embed", photos[0].parent, "--out", out, "--model", tiny_dir, "--batch-size", "3",
                     cache=empty_cache)
    assert "embedding images 4/4" in result.stderr  # the progress bar, on stderr
    with safe_open(out, "pt") as f:
        embeds, sources = f.get_tensor("embeddings"), json.loads(f.metadata()["sources"])
    assert sources == [str(p) for p in sorted(photos)]
    model, preprocess = miniclip.load(tiny_dir)
    with torch.no_grad():
        expected = model.encode_image(preprocess(sorted(photos)))
    assert_close(embeds, expected, atol=1e-5, rtol=1e-5, what="embed file vs encode_image")


def test_cli_embed_texts(tiny_dir, empty_cache, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "texts.safetensors"
    run_cli("embed", "--text", "a cat", "a dog", "--out", out, "--model", tiny_dir, cache=empty_cache)
    model, _ = miniclip.load(tiny_dir)
    with torch.no_grad():
        expected = model.encode_text(miniclip.tokenize(["a cat", "a dog"]))
    assert_close(load_file(out)["embeddings"], expected, atol=1e-5, rtol=1e-5, what="embed --text")


def test_cli_search_ranks_the_query_image_first_and_caches(tiny_dir, photos, empty_cache, tmp_path):
    folder = tmp_path / "gallery"
    folder.mkdir()
    for p in photos:
        (folder / p.name).write_bytes(p.read_bytes())
    first = run_cli("search", folder, folder / photos[2].name, "--image", "-k", "2", "--model", tiny_dir,
                    cache=empty_cache)
    top = first.stdout.splitlines()
    assert len(top) == 2 and top[0].split()[1] == str(folder / photos[2].name)
    assert abs(float(top[0].split()[0]) - 1) < 1e-4  # an image is its own nearest neighbour, cosine 1
    assert "4 new or changed images embedded" in first.stderr

    second = run_cli("search", folder, "a photo of a cat", "--model", tiny_dir, cache=empty_cache)
    assert "0 new or changed images embedded, 4 from the cache" in second.stderr
    assert len(second.stdout.splitlines()) == 4

    make_image(folder / "new.png", (30, 30), seed=99)
    third = run_cli("search", folder, "a cat", "--model", tiny_dir, cache=empty_cache)
    assert "1 new or changed images embedded, 4 from the cache" in third.stderr


def test_cli_similarity_prints_the_matrix_and_plots_it(tiny_dir, photos, empty_cache, tmp_path):
    plot = tmp_path / "matrix.png"
    result = run_cli("similarity", "--image", *photos[:3], "--text", "a cat", "a dog", "--plot", plot,
                     "--model", tiny_dir, cache=empty_cache)
    rows = result.stdout.splitlines()[1:4]
    model, preprocess = miniclip.load(tiny_dir)
    with torch.no_grad():
        sims = F.normalize(model.encode_image(preprocess(photos[:3])), dim=-1) @ \
            F.normalize(model.encode_text(miniclip.tokenize(["a cat", "a dog"])), dim=-1).t()
    printed = torch.tensor([[float(v) for v in row.split()[1:]] for row in rows])
    assert_close(printed, sims, atol=1e-4, rtol=0, what="printed similarities (4 decimals)")
    with Image.open(plot) as image:
        assert image.size == (LABEL_SPACE + 2 * CELL, LABEL_SPACE + 3 * CELL)  # 2 texts across, 3 images down


def test_cli_relevance_writes_a_heatmap_of_the_image_size(tiny_dir, photos, empty_cache, tmp_path):
    out = tmp_path / "map.png"
    run_cli("relevance", photos[0], "a cat", "--out", out, "--model", tiny_dir, cache=empty_cache)
    with Image.open(out) as image, Image.open(photos[0]) as original:
        assert image.size == original.size


def test_the_installed_entry_point_runs():
    script = Path(sys.executable).parent / "miniclip"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "classify" in result.stdout


USER_ERRORS = [  # (arguments, words the one-line message must hold)
    (["classify", "{missing}", "--label", "cat"], ["no such file", "missing.jpg"]),
    (["classify", "{not_image}", "--label", "cat", "--model", "{tiny}"], ["cannot read the image file", "not_image.jpg"]),
    (["classify", "{photo}", "--label", "cat", "--model", "someone/no-such-model"],
     ["someone/no-such-model", "HF_HUB_OFFLINE"]),
    (["classify", "{photo}", "--label", "cat", "--model", "ViT-B/32"], ["openai/clip-vit-base-patch32", "cache"]),
    (["search", "{missing_dir}", "a cat"], ["no such folder"]),
    (["search", "{empty_dir}", "a cat", "--model", "{tiny}"], ["holds no image files"]),
    (["embed", "{photo}", "--out", "{out}", "--model", "{missing_dir}"], ["no checkpoint file or folder"]),
]


@pytest.mark.parametrize("args,words", USER_ERRORS)
def test_cli_user_errors_exit_non_zero_with_one_line(args, words, tiny_dir, photos, empty_cache, tmp_path):
    (tmp_path / "not_image.jpg").write_text("this is not a JPEG")
    (tmp_path / "empty").mkdir()
    where = dict(missing=tmp_path / "missing.jpg", not_image=tmp_path / "not_image.jpg", photo=photos[0],
                 missing_dir=tmp_path / "nowhere", empty_dir=tmp_path / "empty", tiny=tiny_dir,
                 out=tmp_path / "out.safetensors")
    result = run_cli(*[a.format(**where) for a in args], cache=empty_cache, check=False)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("miniclip: error: "), result.stderr  # no traceback
    for w in words:
        assert w in lines[0]


def test_cli_usage_errors_are_argparse_errors(tiny_dir, photos, empty_cache):
    # Mistyped command lines: argparse's usage and one error line, exit status 2 (the convention).
    for args, words in [(["classify", photos[0], "--label", "cat", "--batch-size", "0"], "must be at least 1"),
                        (["classify", photos[0]], "--label"), (["embed", photos[0]], "--out"),
                        (["frobnicate"], "invalid choice")]:
        result = run_cli(*args, "--model", tiny_dir, cache=empty_cache, check=False) if args[0] != "frobnicate" \
            else run_cli(*args, cache=empty_cache, check=False)
        assert result.returncode == 2 and words in result.stderr.strip().splitlines()[-1], result.stderr


def test_cli_convert_round_trip_is_bit_exact(b32_dir, empty_cache, tmp_path):
    # ViT-B/32 sizes: OpenAI's files carry no config, and its sizes are inferred from shapes (64-wide heads)
    openai_file, back = tmp_path / "clip.pt", tmp_path / "hf"
    run_cli("convert", b32_dir, openai_file, "--to", "openai", cache=empty_cache)
    run_cli("convert", openai_file, back, "--to", "transformers", cache=empty_cache)
    from safetensors.torch import load_file

    original = {k: v for k, v in torch.load(b32_dir / "pytorch_model.bin", weights_only=True).items()
                if not k.endswith("position_ids")}
    again = load_file(back / "model.safetensors")
    assert original.keys() == again.keys()
    assert all(torch.equal(original[k], again[k]) for k in original)
    assert torch.load(openai_file, weights_only=True)["visual.proj"].shape == (768, 512)  # OpenAI's (width, embed)
