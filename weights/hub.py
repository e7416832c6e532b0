"""Finding a checkpoint's files: a local file, a local folder in the Hub's layout, or a Hugging Face Hub id.

Hub ids go through `huggingface_hub.hf_hub_download`, so its cache (`HF_HUB_CACHE`, `HF_HOME`), offline
mode (`HF_HUB_OFFLINE=1`), revisions and authentication all work as they do for transformers. Only the
files needed are fetched: one config file and one weights file, never the TensorFlow or Flax weights.
A repository may hold several layouts (laion/CLIP-* has transformers' and open_clip's files; timm/*_clip_*
has open_clip's beside timm's own config.json and model.safetensors): the first complete layout of
LAYOUT_FILES wins, and a config.json of another library is passed over.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from miniclip.config import HUB_IDS
from miniclip.errors import CheckpointError, CheckpointNotFoundError

from . import hf, open_clip

CONFIG_FILE = "config.json"
# Each layout's config file and its weights files, in order of preference: safetensors needs no unpickling
# and can be memory-mapped. The openai/clip-vit-* repositories have only the .bin on their main branch.
LAYOUT_FILES = [
    (CONFIG_FILE, ("model.safetensors", "pytorch_model.bin")),  # transformers
    (open_clip.CONFIG_FILE, open_clip.WEIGHT_FILES),  # open_clip
]
WEIGHT_FILES = tuple(name for _, names in LAYOUT_FILES for name in names)
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class CheckpointFiles:
    weights: Path
    config: Path | None  # None: sizes are inferred from the tensors
    folder: Path  # where the checkpoint's other files (tokenizer, preprocessor config) may be


def resolve(name_or_path, revision: str | None = None, force_download: bool = False) -> CheckpointFiles:
    """Where the checkpoint `name_or_path` is on disk, downloading it (or reading the cache) for Hub ids."""
    name = HUB_IDS.get(str(name_or_path), name_or_path)  # "ViT-B/32" -> "openai/clip-vit-base-patch32"
    path = Path(name).expanduser()
    if path.is_file():
        return CheckpointFiles(path, config_beside(path), path.parent)
    if path.is_dir():
        return in_folder(path)
    if isinstance(name, str) and HUB_ID.match(name) and not name.startswith("."):
        return from_hub(name, revision, force_download)
    raise CheckpointNotFoundError(
        f"no checkpoint file or folder at {path}, and {str(name)!r} is not a Hub id (owner/name) or one of the "
        f"presets {list(HUB_IDS)}"
    )


def config_beside(weights: Path) -> Path | None:
    """The config file for a single weights file: open_clip's for open_clip's file names, else config.json."""
    name = open_clip.CONFIG_FILE if weights.name in open_clip.WEIGHT_FILES else CONFIG_FILE
    config = weights.parent / name
    return config if config.is_file() and not hf.is_other_librarys_config(config) else None


def pick(get) -> CheckpointFiles | None:
    """The first layout whose config and weights `get(file name) -> Path | None` both finds."""
    for config_name, weight_names in LAYOUT_FILES:
        config = get(config_name)
        if config is None or (config_name == CONFIG_FILE and hf.is_other_librarys_config(config)):
            continue
        for name in weight_names:
            if (weights := get(name)) is not None:
                return CheckpointFiles(weights, config, config.parent)
    return None


def in_folder(folder: Path) -> CheckpointFiles:
    files = pick(lambda name: folder / name if (folder / name).is_file() else None)
    if files is not None:
        return files
    for name in WEIGHT_FILES:  # weights without a config file: the sizes are inferred from the shapes
        if (folder / name).is_file():
            return CheckpointFiles(folder / name, None, folder)
    found = sorted(p.name for p in folder.iterdir())[:20]
    raise CheckpointNotFoundError(f"{folder} has none of the weights files {list(WEIGHT_FILES)}; it holds {found}")


def from_hub(repo_id: str, revision: str | None, force_download: bool) -> CheckpointFiles:
    # Imported here: huggingface_hub is only needed when a Hub id is given, and importing it costs time.
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
    )

    def fetch(filename):
        return Path(hf_hub_download(repo_id, filename, revision=revision, force_download=force_download,
                                    library_name="miniclip"))

    misses = []

    def get(filename):
        try:
            return fetch(filename)
        except EntryNotFoundError as e:  # not in the repository, or (offline) not in the cache
            misses.append(e)
            return None

    where = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    try:
        files = pick(get)
    except RevisionNotFoundError as e:
        raise CheckpointNotFoundError(f"the Hub repository {repo_id} has no revision {revision!r}") from e
    except RepositoryNotFoundError as e:
        raise CheckpointNotFoundError(
            f"no Hub repository {repo_id} (or it is private or gated: log in with `hf auth login`)") from e
    if files is not None:
        return files
    wanted = " or ".join(f"{config} with {' or '.join(weights)}" for config, weights in LAYOUT_FILES)
    if misses and all(isinstance(e, LocalEntryNotFoundError) for e in misses):
        raise CheckpointNotFoundError(offline_message(where, wanted))
    raise CheckpointError(f"the Hub repository {where} has none of the layouts miniclip reads: {wanted}")


def offline_message(where: str, what: str) -> str:
    from huggingface_hub import constants

    mode = "HF_HUB_OFFLINE=1 is set" if constants.is_offline_mode() else "the Hub could not be reached"
    return (
        f"could not get {what} of {where}: {mode} and it is not in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}). Fix: connect to the network (and unset HF_HUB_OFFLINE), or download it "
        f"once with `hf download {where.split()[0]}`, or pass a local folder or weights file instead."
    )
