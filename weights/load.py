"""`load`: from a name, folder or file to a ready CLIP model, with nothing loaded twice.

The steps, each in its own module: find the files (hub.py), read the tensors (files.py), read the config
(hf.py), map the names (the layout's table), check every key and shape (table.py), then assign the
tensors to a model built on the `meta` device, so its parameters are the loaded tensors themselves.
"""

import json
from pathlib import Path

import torch

from miniclip.config import PRESETS, CLIPConfig
from miniclip.errors import CheckpointError
from miniclip.model import CLIP

from . import hf
from .files import is_safetensors, read_state_dict, release_pages
from .hub import resolve
from .table import check_shapes


def load(name_or_path, *, device=None, dtype=None, revision=None, config=None, force_download=False) -> CLIP:
    """Loads CLIP weights into a new model, in eval mode.

    name_or_path: a Hub id ("openai/clip-vit-base-patch32"), a preset ("ViT-B/32"), a folder with
        config.json and model.safetensors or pytorch_model.bin, or a single weights file (its sizes are
        read from a config.json beside it, or else from the tensors' shapes).
    device, dtype: where and in what precision to put the weights (default: CPU, float32).
    revision: a Hub branch, tag or commit.  config: a CLIPConfig or preset name overriding config.json.
    force_download: fetch the Hub files again, e.g. to replace a corrupted cached file.
    """
    files = resolve(name_or_path, revision, force_download)
    source = str(files.weights)
    sd = read_state_dict(files.weights)
    config = choose_config(config, files.config, sd, source)
    plan = hf.plan(config)
    ours = plan.to_miniclip(sd, source)
    if files.weights.suffix == ".safetensors" or is_safetensors(files.weights):
        kept = {id(t) for t in ours.values()}
        release_pages(t for t in sd.values() if id(t) not in kept)  # q, k, v: copied into the fused qkv
    with torch.device("meta"):
        model = CLIP(config)
    check_shapes({k: v.shape for k, v in model.state_dict().items()}, ours, source)
    dtype = dtype or torch.float32
    ours = {k: v.to(device=device, dtype=dtype) for k, v in ours.items()}
    model.load_state_dict(ours, strict=True, assign=True)  # assign: the tensors become the parameters
    return model.eval()


def choose_config(config, config_file: Path | None, sd: dict, source: str) -> CLIPConfig:
    if isinstance(config, CLIPConfig):
        return config
    if isinstance(config, str):
        if config not in PRESETS:
            raise CheckpointError(f"unknown preset {config!r}; the presets are {list(PRESETS)}")
        return PRESETS[config]
    if config_file is not None:
        try:
            return hf.config_from_hf(json.loads(Path(config_file).read_text()))
        except (ValueError, TypeError, KeyError) as e:  # JSON errors are ValueErrors
            raise CheckpointError(f"{config_file} is not a valid CLIP config.json: {e}") from e
    try:
        return hf.infer_config(sd)
    except KeyError as e:
        raise CheckpointError(
            f"{source} came without config.json and lacks the tensor {e} needed to infer the model's sizes"
        ) from e
