"""`load`: from a name, folder or file to a ready CLIP model, with nothing loaded twice.

The steps, each in its own module: find the files (hub.py), read the tensors and recognise their layout
(formats.py), read the config (hf.py, open_clip.py) or infer it from the shapes, map the names (the
layout's table: hf.py, openai.py), check every key and shape (table.py), then assign the tensors to a
model built on the `meta` device, so its parameters are the loaded tensors themselves.
"""

import json
from pathlib import Path

import torch

from miniclip.config import PRESETS, RESNET_PRESETS, CLIPConfig
from miniclip.errors import CheckpointError
from miniclip.model import CLIP

from . import formats, hf, open_clip
from .files import is_safetensors, release_pages
from .hub import resolve
from .table import check_shapes


def load(name_or_path, *, device=None, dtype=None, revision=None, config=None, force_download=False) -> CLIP:
    """Loads CLIP weights into a new model, in eval mode.

    name_or_path: a Hub id ("openai/clip-vit-base-patch32", "timm/vit_base_patch32_clip_224.openai"), a
        preset ("ViT-B/32"), a folder with config.json and model.safetensors or pytorch_model.bin (transformers)
        or open_clip_config.json and open_clip_model.safetensors or open_clip_pytorch_model.bin (open_clip),
        or a single weights file, OpenAI's .pt files included (its sizes are read from a config file beside
        it, or else, in OpenAI's layout only, from the tensors' shapes with OpenAI's conventions: shapes.py).
    device, dtype: where and in what precision to put the weights (default: CPU, float32).
    revision: a Hub branch, tag or commit.  config: a CLIPConfig or preset name ("RN50" too) overriding
        the config file.
    force_download: fetch the Hub files again, e.g. to replace a corrupted cached file.
    """
    files = resolve(name_or_path, revision, force_download)
    source = str(files.weights)
    sd = formats.read_weights(files.weights)
    config = choose_config(config, files.config, sd, source)
    layout = formats.recognise(sd, source)  # the tensor names pick the table; the config only gives sizes
    plan = formats.TABLES[layout].plan(config)
    ours = plan.to_miniclip(sd, source)
    if files.weights.suffix == ".safetensors" or is_safetensors(files.weights):
        kept = {t.data_ptr() for t in ours.values()}  # data_ptr, not identity: views (e.g. transposes) share it
        release_pages(t for t in sd.values() if t.data_ptr() not in kept)  # q, k, v: copied into the fused qkv
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
        presets = {**PRESETS, **RESNET_PRESETS}
        if config not in presets:
            raise CheckpointError(f"unknown preset {config!r}; the presets are {list(presets)}")
        return presets[config]
    if config_file is not None:
        is_open_clip = formats.is_open_clip_config(config_file)
        read = open_clip.config_from_open_clip if is_open_clip else hf.config_from_hf
        try:
            return read(json.loads(Path(config_file).read_text()))
        except CheckpointError:
            raise
        except (ValueError, TypeError, KeyError) as e:  # JSON errors are ValueErrors
            kind = "open_clip config" if is_open_clip else "CLIP config.json"
            raise CheckpointError(f"{config_file} is not a valid {kind}: {e}") from e
    layout = formats.recognise(sd, source)
    try:
        return formats.TABLES[layout].infer_config(sd)
    except KeyError as e:
        raise CheckpointError(
            f"{source} came without a config file and lacks the tensor {e} needed to infer the model's sizes "
            f"({layout} layout)"
        ) from e
