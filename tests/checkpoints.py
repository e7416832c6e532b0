"""Test checkpoints: transformers' CLIPModel with deterministic random weights, written as the Hub has them.

No pretrained weights can be downloaded where the tests run, so they make their own, at the released
architectures' true sizes, and lay them out exactly as the Hub and its cache do. Everything the loading
code sees is real files read through the real code paths.

Used by tests/conftest.py (session fixtures) and by benchmarks/ (which adds tests/ to sys.path).
"""

import hashlib
import json
import math
import os
from pathlib import Path

import torch

# transformers-config sizes; the legacy special-token ids are added by `hf_config`.
TINY = dict(
    vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                       image_size=32, patch_size=8),
    text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
    projection_dim=16,
)
B32 = dict(  # ViT-B/32, openai/clip-vit-base-patch32
    vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=224, patch_size=32),
    text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
    projection_dim=512,
)
# What the openai/clip-vit-* config.json files still say (pre transformers PR #24773).
LEGACY_TEXT_IDS = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1)
# The openai repositories' preprocessor_config.json, in its legacy integer form.
LEGACY_PREPROCESSOR = {
    "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224,
}


def hf_config(spec: dict, **text_overrides):
    from transformers import CLIPConfig

    text = {**spec["text_config"], **LEGACY_TEXT_IDS, **text_overrides}
    return CLIPConfig(text_config=text, vision_config=spec["vision_config"], projection_dim=spec["projection_dim"])


@torch.no_grad()
def reference_model(spec: dict, seed: int = 0):
    """transformers' CLIPModel with every tensor random (not just the matrices) and logit_scale = ln 100.

    transformers initialises LayerNorms to (1, 0) and biases to 0; those would let a bug in how they are
    loaded go unseen, so every tensor gets noise of its own.
    """
    from transformers import CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(hf_config(spec)).eval()
    for name, p in model.named_parameters():
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or "layernorm.weight" in name \
                or "layrnorm.weight" in name or "final_layer_norm.weight" in name:
            p.copy_(1 + 0.1 * torch.randn_like(p))
        elif name.endswith(".bias"):
            p.copy_(0.02 * torch.randn_like(p))
    model.logit_scale.fill_(math.log(100))  # what every released checkpoint trained to (the clamp)
    return model


def hub_state_dict(model) -> dict:
    """The state dict as the Hub's pytorch_model.bin holds it, position_ids buffers included."""
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    cfg = model.config
    n_patches = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
    sd["vision_model.embeddings.position_ids"] = torch.arange(n_patches + 1)[None]
    sd["text_model.embeddings.position_ids"] = torch.arange(cfg.text_config.max_position_embeddings)[None]
    return sd


def write_checkpoint(model, folder: Path, weights=("pytorch_model.bin",), tokenizer_files: bool = True) -> Path:
    """A folder as the Hub repository has it: config.json, weights, preprocessor and tokenizer files."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2))
    size = model.config.vision_config.image_size  # 224 for the real ones; the legacy integer form either way
    preprocessor = {**LEGACY_PREPROCESSOR, "size": size, "crop_size": size}
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    sd = hub_state_dict(model)
    if "pytorch_model.bin" in weights:
        torch.save(sd, folder / "pytorch_model.bin")
    if "model.safetensors" in weights:
        # transformers' own safetensors files leave the position_ids buffers out
        save_file({k: v for k, v in sd.items() if not k.endswith("position_ids")}, folder / "model.safetensors",
                  metadata={"format": "pt"})
    if tokenizer_files:
        write_tokenizer_files(folder)
    return folder


def write_tokenizer_files(folder: Path) -> None:
    """vocab.json, merges.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json, as on the Hub.

    vocab.json and merges.txt come from miniclip's shipped merges; transformers' fast tokenizer, built from
    them, writes the rest the way the Hub's files were written.
    """
    from transformers import CLIPTokenizerFast

    from miniclip.tokenizer import write_hub_vocab

    write_hub_vocab(folder)
    tok = CLIPTokenizerFast(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    tok.save_pretrained(str(folder))
    if not (folder / "special_tokens_map.json").exists():  # transformers 5 no longer writes it; the Hub has it
        special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                   "unk_token": "<|endoftext|>"}
        (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


# -----------------------------------------------------------------------------
# The Hugging Face cache: models--{owner}--{name}/{blobs,snapshots/<commit>,refs/main,.no_exist/<commit>}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


LFS_SUFFIXES = (".bin", ".safetensors", ".h5", ".msgpack")


def write_hub_cache(cache: Path, repo_id: str, source: Path, commit: str, absent=("model.safetensors",)) -> Path:
    """Lays out the files of `source` as `huggingface_hub` caches repo `repo_id` at `commit` on main.

    Blobs are named by their ETag, as the Hub serves it: the sha256 for LFS files, the git blob sha1 for the
    others; the snapshot holds relative symlinks to them. `absent` files get the `.no_exist` marker the
    cache records when the Hub answered 404 for them (as it does for model.safetensors on openai's main).
    """
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in sorted(source.iterdir()):
        etag = file_sha256(f) if f.name.endswith(LFS_SUFFIXES) else git_blob_sha1(f.read_bytes())
        blob = blobs / etag
        if not blob.exists():
            os.link(f, blob) if same_device(f, blobs) else blob.write_bytes(f.read_bytes())
        link = snapshot / f.name
        if not link.exists():
            link.symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for name in absent:
        marker = repo / ".no_exist" / commit / name
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    return snapshot


def same_device(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev
