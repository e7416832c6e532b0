"""`convert --to transformers` writes a folder that transformers loads as it loads the Hub's openai/clip-vit-*.

Reference: transformers' own classes reading the converted folder with `from_pretrained`: CLIPModel (the
weights), CLIPTokenizer / CLIPTokenizerFast (the tokenizer files) and CLIPProcessor (preprocessor_config.json
beside them). What each must reproduce and to what tolerance:
- CLIPModel: the source model's (tiny_ref's) image and text embeddings, atol 1e-6 (the same weights run by the
  same code; in practice identical). test_formats.py checks the image tower alone; here the inputs come from
  the converted folder's own processor, so the whole folder is exercised.
- the tokenizers: `miniclip.tokenize`'s ids on plain captions, exactly, up to the padding: the Hub's files make
  `<|endoftext|>` the padding token, so transformers pads with 49407 where OpenAI pads with 0. Captions are
  plain because transformers' normaliser is not OpenAI's on odd text (no ftfy; see test_tokenizer.py).
- CLIPProcessor: `miniclip.preprocess`'s pixels, atol 1e-5, test_preprocess.py's tolerance for
  CLIPImageProcessor (CLIPImageProcessorPil without torchvision; in practice the difference is 0).
"""

import json
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from compare import assert_close
from PIL import Image

import miniclip
from miniclip import CLIP, CLIPConfig, TextConfig, VisionConfig
from miniclip.errors import CheckpointError
from miniclip.image_processing import Preprocessor
from miniclip.tokenizer import attention_mask, tokenize
from miniclip.weights import convert, save

TINY_IMAGE_SIZE = 32  # tests/checkpoints.py TINY
CONTEXT = 77
EOT = 49407
CAPTIONS = ["a photo of a cat", "Hello, world!", "two dogs playing in the snow"]
# What openai/clip-vit-base-patch32 holds besides its weights (it has pytorch_model.bin; we write safetensors).
HUB_FILES = {"config.json", "model.safetensors", "preprocessor_config.json", "vocab.json", "merges.txt",
             "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
# Square, landscape, portrait, tiny, extreme aspect ratios: every branch of resize and crop.
IMAGE_SIZES = [(32, 32), (401, 300), (300, 401), (37, 59), (600, 5), (7, 500), (1, 1)]


def random_image(width, height, seed) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    data = (torch.rand(height, width, 3, generator=g) * 255).to(torch.uint8)
    return Image.frombytes("RGB", (width, height), bytes(data.flatten().tolist()))


@pytest.fixture(scope="module")
def converted(tiny_dir, tmp_path_factory):
    """(folder, files returned) of the tiny checkpoint converted once for the module."""
    out = tmp_path_factory.mktemp("converted") / "tiny-hf"
    return out, convert(tiny_dir, out, "transformers")


def quiet(load, *args):
    with warnings.catch_warnings():  # CLIPImageProcessor's "falling back to CLIPImageProcessorPil" warning
        warnings.simplefilter("ignore")
        return load(*args)


# -----------------------------------------------------------------------------
# The files


def test_writes_the_hubs_files_and_returns_each(converted):
    out, written = converted
    assert len(written) == len(set(written))
    assert set(written) == set(out.iterdir())
    assert {p.name for p in written} == HUB_FILES


def test_cli_writes_the_same_files(tiny_dir, converted, tmp_path):
    out = tmp_path / "cli-out"
    result = subprocess.run([sys.executable, "-m", "miniclip", "convert", str(tiny_dir), str(out), "--to",
                             "transformers"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    reference, _ = converted
    assert {p.name for p in out.iterdir()} == HUB_FILES
    for name in sorted(HUB_FILES):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_tokenizer_config_is_the_hubs(converted):
    out, _ = converted
    config = json.loads((out / "tokenizer_config.json").read_text())
    special = json.loads((out / "special_tokens_map.json").read_text())
    assert special == {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                       "unk_token": "<|endoftext|>"}
    assert config == {**special, "add_prefix_space": False, "do_lower_case": True, "errors": "replace",
                      "model_max_length": CONTEXT, "tokenizer_class": "CLIPTokenizer"}


def test_tokenizer_json_is_what_transformers_builds(converted):
    """tokenizer.json, read by the tokenizers library, is the tokenizer CLIPTokenizerFast builds from vocab.json
    and merges.txt alone (tokenizers writes it back with merges as pairs; we write them as "a b" strings)."""
    from tokenizers import Tokenizer
    from transformers import CLIPTokenizerFast

    out, _ = converted
    ours = json.loads(Tokenizer.from_file(str(out / "tokenizer.json")).to_str())
    built = CLIPTokenizerFast(vocab=str(out / "vocab.json"), merges=str(out / "merges.txt"))
    theirs = json.loads(built.backend_tokenizer.to_str())
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key] == theirs[key], f"{key}: ours {str(ours[key])[:200]}\n theirs {str(theirs[key])[:200]}"


# -----------------------------------------------------------------------------
# transformers reading the folder


@pytest.mark.parametrize("name", ["CLIPTokenizer", "CLIPTokenizerFast"])
def test_transformers_tokenizers_give_tokenize_ids(converted, name):
    import transformers

    out, _ = converted
    tok = getattr(transformers, name).from_pretrained(out)
    assert tok.model_max_length == CONTEXT
    assert (tok.bos_token, tok.eos_token, tok.pad_token_id) == ("<|startoftext|>", "<|endoftext|>", EOT)
    enc = tok(CAPTIONS, padding="max_length", max_length=CONTEXT, return_tensors="pt")
    ours = tokenize(CAPTIONS)
    assert torch.equal(enc.attention_mask, attention_mask(ours))
    # The same ids wherever there is text; the padding is EOT in theirs, 0 in OpenAI's rows.
    theirs = enc.input_ids.masked_fill(enc.attention_mask == 0, 0)
    assert torch.equal(theirs, ours), f"\n  theirs {theirs[:, :12].tolist()}\n  ours   {ours[:, :12].tolist()}"
    assert (enc.input_ids[enc.attention_mask == 0] == EOT).all()


def test_clip_processor_pixels_equal_preprocess(converted):
    from transformers import CLIPProcessor

    out, _ = converted
    processor = quiet(CLIPProcessor.from_pretrained, out)
    assert processor.image_processor.crop_size == {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    images = [random_image(w, h, seed=i) for i, (w, h) in enumerate(IMAGE_SIZES)]
    theirs = processor(images=images, return_tensors="pt")["pixel_values"]
    ours = miniclip.preprocess(images, size=TINY_IMAGE_SIZE)
    for i, (w, h) in enumerate(IMAGE_SIZES):
        assert_close(ours[i], theirs[i], atol=1e-5, rtol=0, what=f"{w}x{h} at {TINY_IMAGE_SIZE}")


@torch.no_grad()
def test_the_folder_end_to_end_gives_the_source_embeddings(converted, tiny_ref):
    """CLIPProcessor (images and texts) -> CLIPModel, all from the folder, against the source model."""
    from transformers import CLIPModel, CLIPProcessor

    out, _ = converted
    model, processor = CLIPModel.from_pretrained(out).eval(), quiet(CLIPProcessor.from_pretrained, out)
    images = [random_image(w, h, seed=i) for i, (w, h) in enumerate(IMAGE_SIZES[:3])]
    inputs = processor(text=CAPTIONS, images=images, padding="max_length", return_tensors="pt")
    for what, features, kwargs in [
        ("image", "get_image_features", dict(pixel_values=inputs["pixel_values"])),
        ("text", "get_text_features", dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])),
    ]:
        converted_model = getattr(model, features)(**kwargs).pooler_output
        source = getattr(tiny_ref, features)(**kwargs).pooler_output
        assert_close(converted_model, source, atol=1e-6, rtol=0, what=f"{what} embeddings")


# -----------------------------------------------------------------------------
# Which preprocessing and which tokenizer files


def test_the_sources_preprocessor_config_is_carried_over(tiny_dir, tmp_path):
    src = shutil.copytree(tiny_dir, tmp_path / "src")
    own = {"size": {"shortest_edge": 40}, "crop_size": {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
           "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "resample": 2}
    (src / "preprocessor_config.json").write_text(json.dumps(own))
    convert(src, tmp_path / "out", "transformers")
    written = Preprocessor.from_config_file(tmp_path / "out" / "preprocessor_config.json")
    assert written == Preprocessor.from_config_file(src / "preprocessor_config.json")
    assert written.size == 40 and written.mean == (0.5, 0.5, 0.5) and written.resample == 2


def test_a_preprocessor_for_another_input_size_is_refused(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="crops images to 224 pixels, but the model takes 32x32"):
        save(tiny, tmp_path / "out", "transformers", preprocessor=Preprocessor())
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_another_vocabulary_gets_no_tokenizer_files(tmp_path):
    config = CLIPConfig(vision=VisionConfig(image_size=32, patch_size=8, width=48, layers=1, heads=4, mlp_width=96),
                        text=TextConfig(vocab_size=1000, width=32, layers=1, heads=4, mlp_width=64), embed_dim=16)
    written = save(CLIP(config), tmp_path / "out", "transformers")
    assert {p.name for p in written} == {"config.json", "model.safetensors", "preprocessor_config.json"}
    assert set(written) == set((tmp_path / "out").iterdir())
    assert "processor_class" not in json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())


@pytest.mark.parametrize("preprocessor", [Preprocessor(), Preprocessor(size=336, crop_size=336),
                                          Preprocessor(size=256, crop_size=224, keep_aspect=False, resample=2)])
def test_preprocessor_to_dict_reads_back(preprocessor):
    assert Preprocessor.from_dict(preprocessor.to_dict()) == preprocessor
    with pytest.raises(ValueError, match="crop='openai'"):
        Preprocessor(crop="openai").to_dict()
