"""Writing a model in a published layout, so weights move between ecosystems (`miniclip convert`).

- "transformers": a folder with config.json and model.safetensors, loadable by transformers' CLIPModel
  and by miniclip. transformers has no ResNet CLIP, so the RN* models cannot be written this way.
- "openai": one file with OpenAI's tensor names, loadable by OpenAI's clip.model.build_model and by
  miniclip: a plain state dict (.pt, .pth, .bin, written by torch.save) or a .safetensors file.

Tensors are written as they are in the model (no casting), so converting a file and converting it back
gives every tensor bit for bit (tested: transformers -> openai -> transformers).
"""

import json
from pathlib import Path

import torch

from miniclip.config import ResNetConfig
from miniclip.errors import CheckpointError

from . import hf, openai
from .files import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES

LAYOUTS = ("transformers", "openai")
TRANSFORMERS_WEIGHTS = "model.safetensors"
SAFETENSORS_METADATA = {"format": "pt"}  # what transformers writes, and checks when it reads


def save(model, dst, layout: str) -> list[Path]:
    """Writes `model` (a miniclip CLIP) to `dst` in `layout`; returns the files written.

    layout "transformers": dst is a folder (created if needed) that gets config.json and model.safetensors.
    layout "openai": dst is a file; its suffix picks the format: .safetensors, or .pt/.pth/.bin (torch.save).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; miniclip writes {list(LAYOUTS)}")
    dst = Path(dst)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    if layout == "transformers":
        return save_transformers(model.config, sd, dst)
    return [save_openai(model.config, sd, dst)]


def convert(src, dst, to: str, **load_kwargs) -> list[Path]:
    """Loads the checkpoint `src` (anything `miniclip.weights.load` accepts: Hub id, preset, folder, file, in
    any layout) and writes it to `dst` in the layout `to` ("transformers" or "openai"); see `save`.

    load_kwargs go to `load` (revision=..., dtype=...). Tensors are loaded as float32 unless dtype says
    otherwise: OpenAI's fp16 .pt files are widened exactly; dtype=torch.float16 keeps them half the size.
    """
    from .load import load  # load imports the model; keep `import miniclip.weights.convert` light

    return save(load(src, **load_kwargs), dst, to)


def save_transformers(config, sd: dict, folder: Path) -> list[Path]:
    if isinstance(config.vision, ResNetConfig):
        raise CheckpointError(
            "transformers has no ResNet CLIP (its CLIPModel is ViT-only), so an RN* model cannot be written in "
            "the transformers layout; write it in the openai layout instead (--to openai)"
        )
    theirs = hf.plan(config).from_miniclip(sd)
    folder.mkdir(parents=True, exist_ok=True)
    config_file, weights_file = folder / "config.json", folder / TRANSFORMERS_WEIGHTS
    config_file.write_text(json.dumps(hf.config_to_hf(config), indent=2))
    write_safetensors(theirs, weights_file)
    return [config_file, weights_file]


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
