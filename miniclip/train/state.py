"""Checkpoints of a training run: the model as other tools load it, and the state that resumes it exactly.

A checkpoint is a folder:
- the model in the transformers layout (config.json, model.safetensors, tokenizer and preprocessor files),
  which transformers' CLIPModel.from_pretrained and miniclip.CLIP.from_pretrained both load; a model that
  layout cannot describe (the ResNets, some open_clip options) is written in OpenAI's layout instead, as
  model.safetensors. `miniclip convert` writes any other layout from it. Weights are written as they are
  (fp32), so they come back bit for bit.
- training_state.pt: the optimizer (AdamW's moments), the grad scaler, the step count (which is also the
  schedule's position and the data's: optim.warmup_cosine, data.ShuffledBatches), every rank's random number
  generators (torch, CUDA, Python, NumPy), and what the caller adds as `extra`.

    save_checkpoint(trainer, "run/step-1000")
    ...
    trainer = Trainer(model, config)          # the model set up as before (towers.py); any weights
    extra = resume(trainer, "run/step-1000")  # weights, optimizer, step and RNGs as they were

On CPU a resumed run computes bit for bit what the uninterrupted run would have (tests/test_train_state.py).
Folders are written under a temporary name and renamed when complete, so a run killed while saving leaves
the previous checkpoint whole.
"""

import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from miniclip.model import CLIP
from miniclip.weights import hf, save

from . import distributed

STATE_FILE = "training_state.pt"


def save_model(model: CLIP, folder) -> list[Path]:
    """Writes `model` to `folder` in the transformers layout, or in OpenAI's (folder/model.safetensors) for
    a model that layout cannot describe; `CLIP.from_pretrained(folder)` loads either. Returns the files."""
    folder = Path(folder)
    if not hf.cannot_describe(model.config):
        return save(model, folder, "transformers")
    return save(model, folder / "model.safetensors", "openai")


def save_checkpoint(trainer, folder, extra: dict | None = None) -> Path:
    """Writes the model and the training state to `folder` (replacing a checkpoint already there). On several
    processes every rank must call it (each one's random number generators are collected); rank 0 writes.
    extra: anything else to keep (tensors, numbers, strings, lists, dicts: what torch.load(weights_only=True)
    reads back), e.g. the epoch or the best validation score so far."""
    folder = Path(folder)
    rngs = gather_objects(rng_state())
    if distributed.is_main():
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(trainer.model, tmp)
        state = {**trainer.state_dict(), "rng": rngs, "extra": extra, "config": repr(trainer.model.config)}
        torch.save(state, tmp / STATE_FILE)
        replace_folder(tmp, folder)
    if distributed.is_distributed():
        dist.barrier()  # no rank goes on (and perhaps exits) before the checkpoint is complete
    return folder


def resume(trainer, folder) -> dict | None:
    """Puts the checkpoint in `folder` back into `trainer`: the model's weights (copied into its parameters
    in place), the optimizer, grad scaler and step, and this rank's random number generators.
    Returns the `extra` it was saved with."""
    folder = Path(folder)
    state = torch.load(folder / STATE_FILE, map_location=trainer.device, weights_only=True)
    if state["config"] != repr(trainer.model.config):
        raise ValueError(f"{folder} holds a model with another config:\n  {state['config']}\nnot\n  "
                         f"{trainer.model.config!r}")
    if len(state["rng"]) != distributed.world_size():
        raise ValueError(f"{folder} was saved by {len(state['rng'])} processes; this run has "
                         f"{distributed.world_size()} (the random number generators are per process)")
    load_weights(trainer.model, folder)
    trainer.load_state_dict(state)
    set_rng_state(state["rng"][distributed.rank()])
    return state["extra"]


@torch.no_grad()
def load_weights(model: CLIP, folder: Path) -> None:
    """Copies the weights saved in `folder` into `model`'s own tensors, so that everything holding them
    (the optimizer, DDP) keeps holding them."""
    saved = CLIP.from_pretrained(folder, config=model.config, device=model.device).state_dict()
    ours = model.state_dict()
    if saved.keys() != ours.keys():
        raise ValueError(f"{folder}: the saved tensors are not the model's: "
                         f"missing {sorted(ours.keys() - saved.keys())[:5]}, unexpected {sorted(saved.keys() - ours.keys())[:5]}")
    for name, tensor in ours.items():
        tensor.copy_(saved[name])


def replace_folder(tmp: Path, folder: Path) -> None:
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


# -----------------------------------------------------------------------------
# Random number generators: whatever the data pipeline draws (augmentations, shuffles) draws the same again.
# Stored as tensors and plain Python values, which torch.load(weights_only=True) reads.


def rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def gather_objects(obj) -> list:
    """[rank 0's obj, rank 1's, ...]; [obj] on one process."""
    if not distributed.is_distributed():
        return [obj]
    out = [None] * distributed.world_size()
    dist.all_gather_object(out, obj)
    return out
