"""Finding a checkpoint's files: a local file, a local folder in the Hub's layout, or a Hugging Face Hub id.

Hub ids go through `huggingface_hub.hf_hub_download`, so its cache (`HF_HUB_CACHE`, `HF_HOME`), offline
mode (`HF_HUB_OFFLINE=1`), revisions and authentication all work as they do for transformers. Only the
files needed are fetched: one config file and one weights file, never the TensorFlow or Flax weights.
A repository may hold several layouts (laion/CLIP-* has transformers' and open_clip's files; timm/*_clip_*
has open_clip's beside timm's own config.json and model.safetensors): the first complete layout of
LAYOUT_FILES wins, and a config.json of another library is passed over.
"""

import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from miniclip.config import HUB_IDS, find_preset, suggest_preset
from miniclip.errors import CheckpointError, CheckpointNotFoundError, InputTypeError

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
    where = locate(name_or_path)
    if isinstance(where, str):
        return from_hub(where, revision, force_download)
    if where.is_file():
        return CheckpointFiles(where, config_beside(where), where.parent)
    if where.is_dir():
        return in_folder(where)
    raise CheckpointNotFoundError(f"no checkpoint file or folder at {where}")


def locate(name_or_path) -> Path | str:
    """What `name_or_path` names: a local file or folder (a Path) or a Hub repository id (a str). In order:

    1. an existing local path is that path, and a Path object is always a path;
    2. a preset in OpenAI's or open_clip's spelling, any case ("ViT-B/32", "vit-b-32") is its Hub id;
    3. a near miss of a preset ("ViT-B/33", "VIT-B32") is refused with a suggestion, without asking the
       Hub (which would take a minute to say no when it cannot be reached), unless the Hugging Face cache
       already holds a repository of that name;
    4. anything else shaped like owner/name is a Hub id.
    `resolve` and `miniclip.pretrained.find_preprocessor_config` both ask this, so they agree.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise InputTypeError(f"name_or_path is a {type(name_or_path).__name__}; expected a preset name, a Hub id "
                             "or a path to a checkpoint file or folder")
    path = Path(name_or_path).expanduser()
    if path.exists() or not isinstance(name_or_path, str):
        return path
    name = name_or_path
    if (preset := find_preset(name)) is not None:
        if preset not in HUB_IDS:  # OpenAI's ResNets: transformers has no ResNet CLIP, so no Hub twin
            raise CheckpointNotFoundError(
                f"{name!r} is OpenAI's {preset}, which has no transformers checkpoint on the Hub: pass the path "
                f"of OpenAI's {preset}.pt (its sizes are read from the tensors), or an open_clip folder")
        return HUB_IDS[preset]
    looks_like_hub_id = bool(HUB_ID.match(name)) and not name.startswith(".")
    if (guess := suggest_preset(name)) is not None and not (looks_like_hub_id and in_hub_cache(name)):
        fix = f"; for a Hub repository of that name, download it once with `hf download {name}`" \
            if looks_like_hub_id else ""
        raise CheckpointNotFoundError(
            f"{name!r} is not a local path or a preset: did you mean {guess!r}? The presets are "
            f"{list(HUB_IDS)}{fix}")
    if looks_like_hub_id:
        return name
    raise CheckpointNotFoundError(
        f"no checkpoint file or folder at {path}, and {name!r} is not a Hub id (owner/name) or one of the "
        f"presets {list(HUB_IDS)}"
    )


def in_hub_cache(repo_id: str) -> bool:
    """Whether the Hugging Face cache has a folder for the model repository `repo_id` (its files or not)."""
    from huggingface_hub import constants

    return (Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))).is_dir()


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
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    where = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    offline = hub_unreachable(repo_id, revision)
    if offline is not None and force_download:
        raise CheckpointNotFoundError(f"cannot download {where} again (force_download=True): {offline}")
    misses = []  # one bool per file not found: True if only the cache was asked
    try:
        files = pick(lambda filename: hub_file(repo_id, filename, revision, force_download, offline, misses))
    except RevisionNotFoundError as e:
        raise CheckpointNotFoundError(f"the Hub repository {repo_id} has no revision {revision!r}") from e
    except RepositoryNotFoundError as e:
        raise CheckpointNotFoundError(
            f"no Hub repository {repo_id} (or it is private or gated: log in with `hf auth login`)") from e
    if files is not None:
        return files
    wanted = " or ".join(f"{config} with {' or '.join(weights)}" for config, weights in LAYOUT_FILES)
    if misses and all(misses):
        raise CheckpointNotFoundError(offline_message(where, wanted, offline or "the Hub could not be reached"))
    raise CheckpointError(f"the Hub repository {where} has none of the layouts miniclip reads: {wanted}")


def hub_file(repo_id: str, filename: str, revision: str | None = None, force_download: bool = False,
             offline: str | None = None, misses: list | None = None) -> Path | None:
    """One file of a Hub repository, through huggingface_hub's cache; None if the repository has no such
    file or, with `offline` (why the Hub cannot be asked, see `hub_unreachable`), the cache has none.
    Each None appends to `misses` whether only the cache was asked."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    misses = [] if misses is None else misses
    if offline is not None:
        # Straight from the cache's folders, as hf_hub_download(local_files_only=True) reads them, but without
        # its HTTP headers: huggingface_hub 2.x builds them with a GET to the Hub (3 s timeout, "agent" detection).
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(found, str):
            return Path(found)
        misses.append(True)
        return None
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, force_download=force_download,
                                    library_name="miniclip"))
    except EntryNotFoundError as e:  # not in the repository, or (the network failed since) not in the cache
        misses.append(isinstance(e, LocalEntryNotFoundError))
        return None


# -----------------------------------------------------------------------------
# Failing fast when the Hub cannot be reached
#
# hf_hub_download (huggingface_hub 1.x-2.x) first sends a HEAD request with a 10 s timeout
# (HF_HUB_ETAG_TIMEOUT) and no retries; if that fails and the file is not in the cache, it tries again
# with a 60 s timeout and 5 retries 1, 2, 4, 8 and 8 s apart. A refused connection so costs 23 s per
# file (measured: 23.5 s; a checkpoint's config.json and open_clip_config.json make it 47 s), a server
# that never answers over 6 minutes. So before the first download, one HEAD request with a short timeout
# asks whether the Hub answers; if not, every file comes from the cache, at once. When the Hub answers,
# hf_hub_download runs exactly as it always does, retries included.

HUB_ANSWER_TIMEOUT = 3.0  # seconds; the Hub answers a HEAD in well under 1 s. HF_HUB_ETAG_TIMEOUT overrides it.
HUB_ANSWER_MEMORY = 30.0  # seconds an answer (or its absence) is remembered: load() asks for up to 3 files
_hub_answers: dict[str, tuple[float, str | None]] = {}  # endpoint -> (when asked, why unreachable or None)


def hub_unreachable(repo_id: str, revision: str | None = None) -> str | None:
    """Why files cannot be downloaded now ("HF_HUB_OFFLINE=1 is set", "the Hub at ... could not be
    reached (...)"), or None if the Hub answers."""
    from huggingface_hub import constants, hf_hub_url

    if constants.is_offline_mode():
        return f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '1')} is set"
    endpoint = constants.ENDPOINT
    asked, why = _hub_answers.get(endpoint, (-math.inf, None))
    if time.monotonic() - asked > HUB_ANSWER_MEMORY:
        timeout = HUB_ANSWER_TIMEOUT
        if constants.HF_HUB_ETAG_TIMEOUT != constants.DEFAULT_ETAG_TIMEOUT:  # the user set it
            timeout = constants.HF_HUB_ETAG_TIMEOUT
        why = ask_hub(hf_hub_url(repo_id, CONFIG_FILE, revision=revision), timeout)
        _hub_answers[endpoint] = (time.monotonic(), why)
    return None if why is None else f"the Hub at {endpoint} could not be reached ({why})"


def ask_hub(url: str, timeout: float) -> str | None:
    """None if the Hub answers a HEAD request for `url` within `timeout` seconds, else what happened.

    Any answer will do (404 and 401 too: hf_hub_download says what they mean), except a server error. The
    request goes through huggingface_hub's own HTTP client (its proxies and certificates), on a thread that
    is given up on after `timeout`: the client's timeouts bound each step (connect, read), not a DNS lookup
    or the sum.
    """
    from huggingface_hub import get_session

    outcome = [f"no answer within {timeout:g} s; set HF_HUB_ETAG_TIMEOUT to wait longer"]

    def ask():
        try:
            status = get_session().head(url, timeout=timeout).status_code
            outcome[0] = f"HTTP {status}" if status >= 500 else None
        except Exception as e:  # noqa: BLE001 - refused, DNS, TLS, proxy, timeout: httpx's or requests' types
            outcome[0] = " ".join(f"{type(e).__name__}: {e}".split())[:200]  # on one line

    thread = threading.Thread(target=ask, daemon=True, name="miniclip-hub-check")
    thread.start()
    thread.join(timeout)
    return outcome[0]


def offline_message(where: str, what: str, why: str) -> str:
    from huggingface_hub import constants

    return (
        f"could not get {what} of {where}: {why}, and it is not in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}). Fix: connect to the network (and unset HF_HUB_OFFLINE), or download it "
        f"once with `hf download {where.split()[0]}`, or pass a local folder or weights file instead."
    )
