"""Writing a model in a published layout, so weights move between ecosystems (`miniclip convert`).

- "transformers": a folder as the Hub's openai/clip-vit-* repositories have it, loadable by miniclip and
  by transformers' CLIPModel, CLIPProcessor, CLIPTokenizer and CLIPTokenizerFast: config.json,
  model.safetensors, preprocessor_config.json, and the tokenizer files (vocab.json, merges.txt,
  tokenizer.json, tokenizer_config.json, special_tokens_map.json). transformers has no ResNet CLIP, so the
  RN* models cannot be written this way.
- "openai": one file with OpenAI's tensor names, loadable by OpenAI's clip.model.build_model and by
  miniclip: a plain state dict (.pt, .pth, .bin, written by torch.save) or a .safetensors file.

Tensors are written as they are in the model (no casting), so converting a file and converting it back
gives every tensor bit for bit (tested: transformers -> openai -> transformers).
"""

import json
from pathlib import Path

import torch

from miniclip.config import OPENAI_TOKENIZER, ResNetConfig
from miniclip.errors import CheckpointError
from miniclip.image_processing import Preprocessor
from miniclip.tokenizer import write_hub_tokenizer
from miniclip.tokenizer.vocab import VOCAB_SIZE

from . import hf, openai
from .files import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES

LAYOUTS = ("transformers", "openai")
TRANSFORMERS_WEIGHTS = "model.safetensors"
PREPROCESSOR_FILE = "preprocessor_config.json"
SAFETENSORS_METADATA = {"format": "pt"}  # what transformers writes, and checks when it reads


def save(model, dst, layout: str, preprocessor: Preprocessor | None = None) -> list[Path]:
    """Writes `model` (a miniclip CLIP) to `dst` in `layout`; returns the files written.

    layout "transformers": dst is a folder (created if needed); see `save_transformers` for its files.
        preprocessor: the image pipeline written to preprocessor_config.json (default: CLIP's standard one
        at the model's input size).
    layout "openai": dst is a file; its suffix picks the format: .safetensors, or .pt/.pth/.bin (torch.save).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; miniclip writes {list(LAYOUTS)}")
    refuse_undescribable(model.config, layout)
    dst = Path(dst)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    if layout == "transformers":
        return save_transformers(model.config, sd, dst, preprocessor)
    return [save_openai(model.config, sd, dst)]


# Each layout's list of what of a config it cannot record (hf.py, openai.py)
TABLES_CANNOT = {"transformers": hf.cannot_describe, "openai": openai.cannot_describe}


def refuse_undescribable(config, layout: str) -> None:
    """A file in `layout` must reload as the same model: refuses, naming each property, a model the layout
    has no way to record (its readers would fill in their own conventions and compute something else)."""
    missing = TABLES_CANNOT[layout](config)
    if missing:
        others = [other for other in LAYOUTS if other != layout and not TABLES_CANNOT[other](config)]
        fix = f"write it with --to {others[0]} instead" if others else "keep it in the layout it came in"
        raise CheckpointError(
            f"the {layout} layout cannot describe this model: {'; '.join(missing)}. Its readers would load a "
            f"different model; {fix}"
        )



def convert(src, dst, to: str, **load_kwargs) -> list[Path]:
    """Loads the checkpoint `src` (anything `miniclip.weights.load` accepts: Hub id, preset, folder, file, in
    any layout) and writes it to `dst` in the layout `to` ("transformers" or "openai"); see `save`.

    load_kwargs go to `load` (revision=..., dtype=...). Tensors are loaded as float32 unless dtype says
    otherwise: OpenAI's fp16 .pt files are widened exactly; dtype=torch.float16 keeps them half the size.
    For "transformers", the source's own preprocessor_config.json is carried over when it has one.
    """
    from miniclip.pretrained import find_preprocessor_config

    from .load import load  # load imports the model; keep `import miniclip.weights.convert` light

    model = load(src, **load_kwargs)
    preprocessor = None
    if to == "transformers" and (file := find_preprocessor_config(src, load_kwargs.get("revision"))) is not None:
        preprocessor = Preprocessor.from_config_file(file)
    return save(model, dst, to, preprocessor)


def save_transformers(config, sd: dict, folder: Path, preprocessor: Preprocessor | None = None) -> list[Path]:
    """config.json and model.safetensors; preprocessor_config.json for a square input size (CLIP's standard
    pipeline unless `preprocessor` is given); and the Hub's tokenizer files when the text tower reads OpenAI's
    vocabulary (49,408 tokens). A model with another tokenizer gets none: miniclip only has OpenAI's."""
    if isinstance(config.vision, ResNetConfig):
        raise CheckpointError(
            "transformers has no ResNet CLIP (its CLIPModel is ViT-only), so an RN* model cannot be written in "
            "the transformers layout; write it in the openai layout instead (--to openai)"
        )
    theirs = hf.plan(config).from_miniclip(sd)
    has_openai_vocabulary = config.text.tokenizer == OPENAI_TOKENIZER and config.text.vocab_size == VOCAB_SIZE
    height, width = config.vision.image_hw
    if preprocessor is None and height == width:  # Preprocessor crops squares; a (h, w) model gets no file
        preprocessor = Preprocessor(size=height, crop_size=height)
    if preprocessor is not None:  # checked before anything is written
        if preprocessor.crop_size != height or height != width:
            raise CheckpointError(f"the preprocessor crops images to {preprocessor.crop_size} pixels, but the model "
                                  f"takes {height}x{width}: the preprocessor config does not belong to this model")
        # processor_class lets AutoProcessor find CLIPProcessor, which also needs the tokenizer files
        hf_preprocessor = preprocessor.to_dict() | ({"processor_class": "CLIPProcessor"} if has_openai_vocabulary
                                                    else {})
    folder.mkdir(parents=True, exist_ok=True)
    config_file, weights_file = folder / "config.json", folder / TRANSFORMERS_WEIGHTS
    config_file.write_text(json.dumps(hf.config_to_hf(config), indent=2))
    write_safetensors(theirs, weights_file)
    written = [config_file, weights_file]
    if preprocessor is not None:
        (folder / PREPROCESSOR_FILE).write_text(json.dumps(hf_preprocessor, indent=2))
        written.append(folder / PREPROCESSOR_FILE)
    if has_openai_vocabulary:
        written += write_hub_tokenizer(folder, model_max_length=config.text.context_length)
    return written


def save_openai(config, sd: dict, file: Path) -> Path:
    suffix = file.suffix.lower()
    if suffix not in SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES:
        raise ValueError(
            f"{file}: the openai layout is one file; name it .safetensors or one of {sorted(PICKLE_SUFFIXES)}"
        )
    theirs = openai.plan(config).from_miniclip(sd)
    file.parent.mkdir(parents=True, exist_ok=True)
    if suffix in SAFETENSORS_SUFFIXES:
        write_safetensors(theirs, file)
    else:
        torch.save(separate(theirs), file)
    return file


def separate(sd: dict) -> dict:
    # q, k and v come out of the fused qkv as views of one buffer; safetensors refuses tensors that share
    # memory, and torch.save would write the whole buffer once per view. A copy each keeps every file plain.
    return {k: v.contiguous().clone() for k, v in sd.items()}


def write_safetensors(sd: dict, file: Path) -> None:
    from safetensors.torch import save_file

    save_file(separate(sd), file, metadata=SAFETENSORS_METADATA)
