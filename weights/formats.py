"""Which published layout a checkpoint is in: one explicit rule per layout, on file and tensor names.

The rules (also the text of every error, so a user sees what miniclip looked for):
- transformers: tensor names start with vision_model. / text_model. / visual_projection.
  (the Hub's openai/clip-vit-*; config.json beside them)
- openai: tensor names start with visual. / transformer.resblocks. / token_embedding. / positional_embedding /
  ln_final. (OpenAI's .pt files, TorchScript archives or plain state dicts; sizes inferred from shapes)
- open_clip: OpenAI's tensor names, with open_clip_config.json beside them
  (open_clip_model.safetensors or open_clip_pytorch_model.bin, e.g. timm/*_clip_*.openai, laion/CLIP-*)
`logit_scale` and `text_projection` are spelled alike in both and decide nothing. The tensor names
decide the table; the config file, whichever it is, only gives the sizes.

Files are read as one of three things, tried in this order: a TorchScript archive (torchscript.py: its
tensors unpickled by a restricted unpickler, its code never loaded), a safetensors file, a PyTorch state
dict (files.py: torch.load(weights_only=True)).
"""

from pathlib import Path

from miniclip.errors import CheckpointError, CheckpointNotFoundError

from . import hf, open_clip, openai, torchscript
from .files import read_state_dict

# The first component of a tensor's name that only one layout uses.
KEY_ROOTS = {
    "transformers": {"vision_model", "text_model", "visual_projection"},
    "openai": {"visual", "transformer", "token_embedding", "positional_embedding", "ln_final"},
}
SHARED_ROOTS = {"logit_scale", "text_projection"}
RULES = (
    "miniclip recognises these layouts:\n"
    "  transformers: tensor names start with vision_model. / text_model. / visual_projection. (config.json)\n"
    "  openai: tensor names start with visual. / transformer.resblocks. / token_embedding. / positional_embedding"
    " / ln_final. (OpenAI's .pt files: TorchScript archives or state dicts)\n"
    "  open_clip: OpenAI's tensor names, with open_clip_config.json beside open_clip_model.safetensors or "
    "open_clip_pytorch_model.bin\n"
    "and reads weights from safetensors files, PyTorch state dicts (torch.save) and TorchScript archives."
)
TABLES = {"transformers": hf, "openai": openai}  # layout -> the module with its plan() and infer_config()


def read_weights(path: Path) -> dict:
    """The tensors in `path`, whatever of the three file kinds it is."""
    path = Path(path)
    try:
        if path.is_file() and torchscript.is_torchscript(path):
            return torchscript.read_torchscript(path)
        return read_state_dict(path)
    except CheckpointNotFoundError:
        raise
    except CheckpointError as e:
        raise CheckpointError(f"{e}\n{RULES}") from e


def recognise(sd: dict, source: str) -> str:
    """The layout of the tensor names in `sd`: "transformers" or "openai" (open_clip's names are OpenAI's)."""
    roots = {}
    for key in sd:
        roots.setdefault(key.split(".", 1)[0], key)  # each root with one example key
    found = {}  # layout -> example keys of its own
    for layout, layout_roots in KEY_ROOTS.items():
        if layout_roots & roots.keys():
            found[layout] = sorted(roots[r] for r in layout_roots & roots.keys())
    if len(found) == 1:
        return next(iter(found))
    if found:
        mixed = "; ".join(f"{layout} ({', '.join(examples[:3])})" for layout, examples in found.items())
        raise CheckpointError(
            f"{source} mixes the tensor names of several layouts: {mixed}. A checkpoint must be in one layout; "
            f"was it assembled from two files?\n{RULES}"
        )
    unknown = sorted(roots.keys() - SHARED_ROOTS)[:8]
    raise CheckpointError(
        f"{source} is in no layout miniclip knows: its tensor names start with {unknown or sorted(roots)[:8]} "
        f"(e.g. {list(sd)[:3]}). If the names carry a prefix such as 'module.' or 'model.', strip it.\n{RULES}"
    )


def is_open_clip_config(config_file: Path | None) -> bool:
    return config_file is not None and Path(config_file).name == open_clip.CONFIG_FILE
