"""Shared fixtures: reference models and checkpoints, built once per test session under pytest's tmp folder.

The tests never touch the network (except those marked `network`, which run in a subprocess of their own):
HF_HUB_OFFLINE is set here, before anything imports huggingface_hub, which reads it once at import.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from checkpoints import B32, TINY, reference_model, write_checkpoint, write_hub_cache  # noqa: E402

HUB_REPO = "openai/clip-vit-base-patch32"
HUB_COMMIT = "3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268"  # any 40-hex commit id; the cache only needs one

torch.set_num_threads(max(1, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_ref():
    """transformers' CLIPModel at a tiny size, random weights (seed 0)."""
    return reference_model(TINY, seed=0)


@pytest.fixture(scope="session")
def b32_ref():
    """transformers' CLIPModel at the true ViT-B/32 sizes, random weights (seed 0)."""
    return reference_model(B32, seed=0)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny_ref):
    """A tiny checkpoint folder with config.json, model.safetensors and pytorch_model.bin (same weights)."""
    return write_checkpoint(tiny_ref, tmp_path_factory.mktemp("tiny"), weights=("model.safetensors", "pytorch_model.bin"))


@pytest.fixture(scope="session")
def b32_dir(tmp_path_factory, b32_ref):
    """The ViT-B/32 test checkpoint as the openai repository's main branch has it: .bin only, legacy configs."""
    return write_checkpoint(b32_ref, tmp_path_factory.mktemp("b32"), weights=("pytorch_model.bin",))


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory, b32_dir):
    """A Hugging Face cache holding openai/clip-vit-base-patch32 (the B/32 test weights), made current.

    huggingface_hub reads HF_HUB_CACHE once, at import, into `constants.HF_HUB_CACHE`, which
    hf_hub_download reads at each call; tests that need the environment variable itself run a subprocess.
    """
    from huggingface_hub import constants

    cache = tmp_path_factory.mktemp("hf_cache")
    write_hub_cache(cache, HUB_REPO, b32_dir, HUB_COMMIT)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_CACHE", str(cache))
        mp.setenv("HF_HUB_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """miniclip's model loaded from the tiny checkpoint (shared: tests must not change its weights)."""
    from miniclip import CLIP

    return CLIP.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def b32(b32_dir):
    """miniclip's model loaded from the ViT-B/32 test checkpoint (shared: tests must not change its weights)."""
    from miniclip import CLIP

    return CLIP.from_pretrained(b32_dir)


@pytest.fixture
def one_thread():
    """Torch on one thread for the test. Models and problems this small gain nothing from a second thread, and
    on a busy machine each op's threads wait for each other (one tiny training step: 0.05 s on one thread,
    1.3 s on two while other processes ran; a linear probe of tens of rows 50x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
