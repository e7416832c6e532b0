"""The OpenAI-style entry point: `model, preprocess = miniclip.load("ViT-B/32")`.

`load` is `CLIP.from_pretrained` with the inference speed-ups applied (miniclip/speedups.py: same numbers to
fp32 rounding, stepping aside by themselves for autograd, autocast, tracing, export, compile, hooks and
replaced modules), plus the image preprocessing that belongs to the checkpoint: read from its
`preprocessor_config.json` when it has one (the openai Hub repositories do, in the legacy integer form),
otherwise CLIP's standard pipeline at the model's input size.
"""

from pathlib import Path

from .config import HUB_IDS
from .image_processing import Preprocessor
from .speedups import apply as apply_speedups
from .model import CLIP
from .weights import hub, open_clip

PREPROCESSOR_FILE = "preprocessor_config.json"


def available_models() -> list[str]:
    """The names `load` knows without a path: OpenAI's model names and their Hub ids."""
    return list(HUB_IDS) + list(HUB_IDS.values())


def load(name_or_path, device=None, dtype=None, *, revision=None, speedups=True) -> tuple[CLIP, Preprocessor]:
    """Returns (model in eval mode, preprocess) for a model name, Hub id, folder or weights file.

    name_or_path: "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px" (see `available_models()`; any case,
        and open_clip's spellings "ViT-B-32", "ViT-L-14-336" too), a Hub id such as
        "openai/clip-vit-base-patch32", a local folder in the Hub's layout, or a weights file.
    device, dtype: where and in what precision to put the weights (default: CPU, float32); dtype is a torch
        dtype or a name ("fp16", "bfloat16", ...). `preprocess` returns float32 pixels on the CPU; move them
        with `.to(model.device, model.dtype)`.
    speedups: apply `miniclip.speedups` (default); False gives the plain model, as `CLIP.from_pretrained` does.
    """
    model = CLIP.from_pretrained(name_or_path, device=device, dtype=dtype, revision=revision)
    if speedups:
        apply_speedups(model)
    if not isinstance(model.config.vision.image_size, int):
        raise ValueError(
            f"{name_or_path} takes {model.config.vision.image_size} (height, width) images, and miniclip's "
            "preprocessing makes square ones: load it with CLIP.from_pretrained and resize the images yourself"
        )
    config_file = find_preprocessor_config(name_or_path, revision)
    open_clip_file = None if config_file is not None else find_preprocessor_config(name_or_path, revision,
                                                                                    open_clip.CONFIG_FILE)
    if config_file is not None:
        preprocess = Preprocessor.from_config_file(config_file)
    elif open_clip_file is not None:
        preprocess = open_clip.preprocessor(open_clip_file, model.config.vision.image_size)
    else:
        preprocess = Preprocessor(size=model.config.vision.image_size)
    if preprocess.crop_size != model.config.vision.image_size:
        raise ValueError(
            f"{config_file} crops images to {preprocess.crop_size} pixels, but the model takes "
            f"{model.config.vision.image_size}: the preprocessor config does not belong to this checkpoint"
        )
    return model, preprocess


def find_preprocessor_config(name_or_path, revision=None, filename=PREPROCESSOR_FILE) -> Path | None:
    """The checkpoint's preprocessor_config.json (or `filename`), if it has one: beside a file, in a folder,
    or on the Hub. Names are read as `CLIP.from_pretrained` reads them (`miniclip.weights.hub.locate`)."""
    where = hub.locate(name_or_path)
    if isinstance(where, str):  # the weights were found already, so the repository exists (or is cached)
        return hub.hub_file(where, filename, revision, offline=hub.hub_unreachable(where, revision))
    candidate = (where if where.is_dir() else where.parent) / filename
    return candidate if where.exists() and candidate.is_file() else None
