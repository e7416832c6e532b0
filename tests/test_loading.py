"""Loading checkpoints: the Hub cache (offline, through the real huggingface_hub code), folders, single files,
and every way a checkpoint can be wrong.

The checkpoints are transformers' CLIPModel with random weights (see checkpoints.py), laid out as the Hub
and its cache lay them out. Nothing here is mocked: `from_pretrained` reads real files through
`hf_hub_download`, `safetensors` and `torch.load`.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from checkpoints import TINY, reference_model, write_checkpoint, write_hub_cache
from compare import assert_close
from conftest import HUB_COMMIT, HUB_REPO

from miniclip import CLIP
from miniclip.errors import CheckpointError, CheckpointNotFoundError

EMBED_TOL = dict(atol=1e-5, rtol=1e-5)


def probe_inputs(image_size):
    g = torch.Generator().manual_seed(1)
    px = torch.randn(2, 3, image_size, image_size, generator=g)
    ids = torch.zeros(2, 77, dtype=torch.long)
    ids[:, 0] = 49406
    ids[0, 1:4] = torch.tensor([320, 1125, 539])
    ids[0, 4] = 49407
    ids[1, 1:9] = torch.randint(1, 49406, (8,), generator=g)
    ids[1, 9] = 49407
    return px, ids


@torch.no_grad()
def outputs(model, image_size):
    px, ids = probe_inputs(image_size)
    return model.encode_image(px), model.encode_text(ids)


@torch.no_grad()
def reference_outputs(ref, image_size):
    px, ids = probe_inputs(image_size)
    return (ref.get_image_features(pixel_values=px).pooler_output,
            ref.get_text_features(input_ids=ids).pooler_output)


def assert_same_model(model, ref, image_size, what):
    ours, theirs = outputs(model, image_size), reference_outputs(ref, image_size)
    assert_close(ours[0], theirs[0], **EMBED_TOL, what=f"{what}: image embeddings")
    assert_close(ours[1], theirs[1], **EMBED_TOL, what=f"{what}: text embeddings")


@pytest.fixture(scope="module")
def tiny_other_ref():
    """A second tiny reference with other weights (seed 1), to tell which file a loader read."""
    return reference_model(TINY, seed=1)


# -----------------------------------------------------------------------------
# The Hugging Face cache, offline


def test_hub_id_loads_offline_from_the_cache(hub_cache, b32_ref):
    # The cache holds what the real repository's main branch has: pytorch_model.bin and no model.safetensors
    # (recorded in .no_exist), so this also checks the fallback from safetensors to the .bin.
    model = CLIP.from_pretrained(HUB_REPO)
    assert_same_model(model, b32_ref, 224, "openai/clip-vit-base-patch32 from the cache")
    assert abs(model.logit_scale.exp().item() - 100) < 1e-4
    assert not model.training


def test_cache_layout_is_the_hubs(hub_cache):
    repo = hub_cache / "models--openai--clip-vit-base-patch32"
    snapshot = repo / "snapshots" / HUB_COMMIT
    assert (repo / "refs" / "main").read_text() == HUB_COMMIT
    assert (repo / ".no_exist" / HUB_COMMIT / "model.safetensors").exists()
    expected = {"config.json", "pytorch_model.bin", "preprocessor_config.json", "vocab.json", "merges.txt",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    assert expected <= {p.name for p in snapshot.iterdir()}
    assert all((snapshot / name).is_symlink() for name in expected)
    sd = torch.load(snapshot / "pytorch_model.bin", weights_only=True)
    assert "text_model.embeddings.position_ids" in sd and "vision_model.embeddings.position_ids" in sd
    preprocessor = json.loads((snapshot / "preprocessor_config.json").read_text())
    assert preprocessor["size"] == 224 and preprocessor["crop_size"] == 224  # legacy integers
    config = json.loads((snapshot / "config.json").read_text())
    assert config["text_config"]["eos_token_id"] == 2  # the legacy id the real file carries


def test_preset_name_and_revision_resolve_through_the_cache(hub_cache, b32_ref):
    model = CLIP.from_pretrained("ViT-B/32", revision=HUB_COMMIT)  # a preset name maps to its Hub id
    assert_same_model(model, b32_ref, 224, "ViT-B/32 at a pinned commit")


def test_unknown_revision_offline_is_a_clear_error(hub_cache):
    with pytest.raises(CheckpointNotFoundError, match="HF_HUB_OFFLINE"):
        CLIP.from_pretrained(HUB_REPO, revision="0" * 40)


def test_unknown_repository_offline_says_how_to_fix_it(hub_cache):
    with pytest.raises(CheckpointNotFoundError) as e:
        CLIP.from_pretrained("openai/clip-vit-huge-patch99")
    message = str(e.value)
    for words in ("openai/clip-vit-huge-patch99", "HF_HUB_OFFLINE=1", str(hub_cache), "local folder"):
        assert words in message
    assert isinstance(e.value, FileNotFoundError)  # existing `except FileNotFoundError` keeps working


def test_environment_variables_alone_select_cache_and_offline_mode(hub_cache, b32_ref, tmp_path):
    # A fresh process, configured only as a user would configure it: HF_HUB_CACHE and HF_HUB_OFFLINE.
    out = tmp_path / "embeds.pt"
    px, ids = probe_inputs(224)
    torch.save({"px": px, "ids": ids}, tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import torch, miniclip
        inputs = torch.load({str(tmp_path / 'inputs.pt')!r})
        model = miniclip.CLIP.from_pretrained("{HUB_REPO}")
        with torch.no_grad():
            torch.save({{"image": model.encode_image(inputs["px"]), "text": model.encode_text(inputs["ids"]),
                        "scale": model.logit_scale.exp()}}, {str(out)!r})
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_CACHE=str(hub_cache), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    got, (image, text) = torch.load(out), reference_outputs(b32_ref, 224)
    assert_close(got["image"], image, **EMBED_TOL, what="image embeddings in a subprocess")
    assert_close(got["text"], text, **EMBED_TOL, what="text embeddings in a subprocess")
    assert abs(got["scale"].item() - 100) < 1e-4


def test_safetensors_is_preferred_over_the_bin_in_the_cache(tmp_path, tiny_ref, tiny_other_ref):
    # Two weights files with different weights: the loader must read model.safetensors.
    from huggingface_hub import constants

    folder = mixed_folder(tmp_path / "mixed", safetensors_from=tiny_ref, bin_from=tiny_other_ref)
    cache = tmp_path / "cache"
    write_hub_cache(cache, "someone/tiny-clip", folder, "1" * 40, absent=())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_CACHE", str(cache))
        model = CLIP.from_pretrained("someone/tiny-clip")
    assert_same_model(model, tiny_ref, 32, "safetensors over .bin (cache)")


def test_safetensors_is_preferred_over_the_bin_in_a_folder(tmp_path, tiny_ref, tiny_other_ref):
    folder = mixed_folder(tmp_path / "mixed", safetensors_from=tiny_ref, bin_from=tiny_other_ref)
    assert_same_model(CLIP.from_pretrained(folder), tiny_ref, 32, "safetensors over .bin (folder)")
    assert_same_model(CLIP.from_pretrained(folder / "pytorch_model.bin"), tiny_other_ref, 32, "the .bin asked for")


def mixed_folder(folder: Path, safetensors_from, bin_from) -> Path:
    write_checkpoint(safetensors_from, folder, weights=("model.safetensors",), tokenizer_files=False)
    other = write_checkpoint(bin_from, folder.parent / "other", weights=("pytorch_model.bin",), tokenizer_files=False)
    shutil.copy(other / "pytorch_model.bin", folder / "pytorch_model.bin")
    return folder


def test_corrupted_cache_file_names_the_file_and_the_fix(tmp_path, tiny_dir):
    from huggingface_hub import constants

    cache = tmp_path / "cache"
    snapshot = write_hub_cache(cache, "someone/broken-clip", only(tiny_dir, tmp_path / "src", "model.safetensors"),
                               "2" * 40, absent=("pytorch_model.bin",))
    blob = (snapshot / "model.safetensors").resolve()
    blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])  # an interrupted download
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_CACHE", str(cache))
        with pytest.raises(CheckpointError) as e:
            CLIP.from_pretrained("someone/broken-clip")
    assert "model.safetensors" in str(e.value) and "force_download=True" in str(e.value)


def only(folder: Path, dest: Path, weights: str) -> Path:
    """A copy of checkpoint `folder` with config.json and one weights file."""
    dest.mkdir(parents=True)
    for name in ("config.json", weights):
        shutil.copy(folder / name, dest / name)
    return dest


# -----------------------------------------------------------------------------
# Folders and files


def test_safetensors_bin_and_single_file_give_identical_outputs(tiny_dir, tmp_path):
    from_safetensors = outputs(CLIP.from_pretrained(only(tiny_dir, tmp_path / "st", "model.safetensors")), 32)
    from_bin = outputs(CLIP.from_pretrained(only(tiny_dir, tmp_path / "bin", "pytorch_model.bin")), 32)
    from_file = outputs(CLIP.from_pretrained(tiny_dir / "model.safetensors"), 32)
    for a, b, c in zip(from_safetensors, from_bin, from_file):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_single_transformers_file_without_config_is_refused_not_guessed(b32_dir, b32_ref, tmp_path):
    # transformers' layout has no convention for what shapes cannot tell (head count, activation, eps): a
    # lone file is refused with what is missing and how to give it, and loads once config= gives it.
    alone = tmp_path / "alone"
    alone.mkdir()
    os.link(b32_dir / "pytorch_model.bin", alone / "weights.bin")
    with pytest.raises(CheckpointError, match=r"without config\.json.*head count, activation and LayerNorm eps.*config="):
        CLIP.from_pretrained(alone / "weights.bin")
    model = CLIP.from_pretrained(alone / "weights.bin", config="ViT-B/32")
    assert model.config.vision.heads == 12 and model.config.text.heads == 8
    assert_same_model(model, b32_ref, 224, "B/32 from a lone .bin with config=")


@pytest.mark.parametrize("heads, width", [(6, 192), (1, 48)])  # 32-wide heads (was: 3 heads); 48 (was: 1/0)
def test_lone_transformers_file_with_heads_not_64_wide_is_refused(tmp_path, heads, width):
    spec = dict(vision_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
                                   num_attention_heads=heads, image_size=32, patch_size=16),
                text_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
                                 num_attention_heads=heads), projection_dim=16)
    ref = reference_model(spec)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="head count"):
        CLIP.from_pretrained(tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(ref.config.to_dict()))  # with its config: exact
    assert_same_model(CLIP.from_pretrained(tmp_path / "model.safetensors"), ref, 32, f"{heads} heads, {width} wide")


def test_safetensors_tensors_are_memory_mapped_not_copied(tiny_dir):
    # Loading assigns the file's tensors to a meta-device model: no second copy is made for float32.
    from safetensors import safe_open

    model = CLIP.from_pretrained(tiny_dir / "model.safetensors")
    with safe_open(tiny_dir / "model.safetensors", "pt") as f:
        expected = f.get_tensor("text_model.embeddings.token_embedding.weight")
    assert torch.equal(model.text.token_embedding.weight, expected)
    assert not any(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_argument(tiny_dir, tiny_ref, dtype):
    model = CLIP.from_pretrained(tiny_dir, dtype=dtype)
    assert model.dtype == dtype and all(p.dtype == dtype for p in model.parameters())
    image, _ = outputs(CLIP.from_pretrained(tiny_dir), 32)
    px, _ = probe_inputs(32)
    with torch.no_grad():
        low = model.encode_image(px.to(dtype)).float()
    assert (low - image).abs().max() < 0.05 * image.abs().max()  # same model, lower precision


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_device_and_dtype_arguments_put_every_tensor_there(tiny_dir, dtype):
    # Loading onto another device puts every tensor there, in the dtype asked for; the image paths then run
    # on it with the shapes expected. The meta device is used because it allocates nothing, not as a GPU
    # stand-in: torch lets a CPU tensor mix with a meta one silently, so this cannot catch a CPU tensor made
    # inside the forward pass. That is tested only on a GPU machine (tests/test_cuda.py, marked cuda).
    model = CLIP.from_pretrained(tiny_dir, device="meta", dtype=dtype)
    assert all(t.device.type == "meta" and t.dtype == dtype for t in model.state_dict().values())
    v = model.config.vision
    px = torch.empty(2, 3, v.image_size, v.image_size, device="meta", dtype=dtype)
    with torch.no_grad():
        assert model.encode_image(px).shape == (2, model.config.embed_dim)
        out = model.encode_image(px, output_hidden_states=True, output_attentions=True)
        assert out.attentions[-1].shape == (2, v.heads, v.num_positions, v.num_positions)
        assert model.encode_image_patches(px).shape == (2, v.grid_size ** 2, v.width)
        big = torch.empty(1, 3, 2 * v.image_size, 2 * v.image_size, device="meta", dtype=dtype)
        assert model.encode_image(big, interpolate_pos_encoding=True).shape == (1, model.config.embed_dim)


@pytest.mark.parametrize("preset", ["ViT-B/32", "RN50"])
def test_released_image_encoders_give_their_shapes(preset):
    # The released architectures' image encoders, the ResNet's attention pool included, built and run on the
    # meta device (shapes only, nothing allocated; see above for what this does not test).
    from miniclip.config import PRESETS, RESNET_PRESETS

    config = {**PRESETS, **RESNET_PRESETS}[preset]
    with torch.device("meta"):
        model = CLIP(config).eval()
    size = config.vision.image_size
    with torch.no_grad():
        assert model.encode_image(torch.empty(3, 3, size, size, device="meta")).shape == (3, config.embed_dim)


# -----------------------------------------------------------------------------
# Bad checkpoints: each is an error that names the problem, and no model comes back


def edited_checkpoint(tmp_path, tiny_ref, edit) -> Path:
    """The tiny checkpoint as a safetensors folder, its state dict changed by `edit(sd)`."""
    from checkpoints import hub_state_dict
    from safetensors.torch import save_file

    folder = write_checkpoint(tiny_ref, tmp_path / "edited", weights=(), tokenizer_files=False)
    sd = hub_state_dict(tiny_ref)
    edit(sd)
    save_file(sd, folder / "model.safetensors")
    return folder


def test_missing_tensor(tmp_path, tiny_ref):
    folder = edited_checkpoint(tmp_path, tiny_ref, lambda sd: sd.pop("vision_model.post_layernorm.bias"))
    with pytest.raises(CheckpointError, match=r"missing tensors: vision_model\.post_layernorm\.bias"):
        CLIP.from_pretrained(folder)


def test_extra_tensor(tmp_path, tiny_ref):
    folder = edited_checkpoint(tmp_path, tiny_ref, lambda sd: sd.update({"vision_model.extra.weight": torch.ones(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors: vision_model\.extra\.weight"):
        CLIP.from_pretrained(folder)


def test_tensor_of_the_wrong_shape(tmp_path, tiny_ref):
    def edit(sd):
        sd["text_projection.weight"] = torch.zeros(16, 33)

    with pytest.raises(CheckpointError) as e:
        CLIP.from_pretrained(edited_checkpoint(tmp_path, tiny_ref, edit))
    assert "text.proj.weight: found (16, 33), expected (16, 32)" in str(e.value)


def test_config_that_does_not_match_the_weights(tmp_path, tiny_ref):
    folder = edited_checkpoint(tmp_path, tiny_ref, lambda sd: None)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["hidden_size"] = 64  # the weights are 32 wide
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"wrong shape.*config\.json"):
        CLIP.from_pretrained(folder)


def test_config_with_fewer_layers_than_the_weights(tmp_path, tiny_ref):
    folder = edited_checkpoint(tmp_path, tiny_ref, lambda sd: None)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["num_hidden_layers"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"unexpected tensors: vision_model\.encoder\.layers\.1\."):
        CLIP.from_pretrained(folder)


def test_truncated_safetensors(tmp_path, tiny_dir):
    folder = only(tiny_dir, tmp_path / "t", "model.safetensors")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors file"):
        CLIP.from_pretrained(folder)


def test_truncated_bin(tmp_path, tiny_dir):
    folder = only(tiny_dir, tmp_path / "t", "pytorch_model.bin")
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin is neither a safetensors file nor"):
        CLIP.from_pretrained(folder)


def test_path_that_does_not_exist(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint file or folder at"):
        CLIP.from_pretrained(tmp_path / "nowhere")


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointNotFoundError, match=r"has none of the weights files.*config\.json"):
        CLIP.from_pretrained(tmp_path)


def test_config_json_that_is_not_json(tmp_path, tiny_dir):
    folder = only(tiny_dir, tmp_path / "c", "model.safetensors")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json is not a valid CLIP config\.json"):
        CLIP.from_pretrained(folder)


class CreatesAFile:
    """An object whose unpickling would create a file: what a malicious checkpoint does."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    victim = tmp_path / "pwned"
    bad = tmp_path / "evil.bin"
    torch.save({"x": torch.zeros(1), "payload": CreatesAFile(victim)}, bad)
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        CLIP.from_pretrained(bad)
    assert not victim.exists()


# -----------------------------------------------------------------------------
# The real checkpoint, for users with a network


NETWORK_SCRIPT = """
import io, urllib.request, torch, miniclip
from PIL import Image
model, preprocess = miniclip.load("openai/clip-vit-base-patch32")
url = "http://images.cocodataset.org/val2017/000000039769.jpg"  # two cats on a couch
image = Image.open(io.BytesIO(urllib.request.urlopen(url, timeout=30).read()))
with torch.no_grad():
    logits, _ = model(preprocess(image)[None], miniclip.tokenize(["a photo of a cat", "a photo of a dog"]))
print(logits.tolist())
expected = torch.tensor([[24.5701, 19.3049]])  # transformers' published expectation (test_modeling_clip.py)
assert torch.allclose(logits, expected, atol=1e-3), (logits, expected)
"""


def hub_reachable() -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.network
def test_real_checkpoint_gives_the_published_logits(tmp_path):
    if not hub_reachable():
        pytest.skip("no network: huggingface.co cannot be reached, so the real openai/clip-vit-base-patch32 "
                    "cannot be downloaded")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}  # conftest sets it for all others
    result = subprocess.run([sys.executable, "-c", NETWORK_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
