"""The public API: load, zero-shot classification, image files to logits end to end (the command line is
tests/test_cli.py)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from compare import assert_close
from conftest import HUB_REPO
from PIL import Image

import miniclip

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
