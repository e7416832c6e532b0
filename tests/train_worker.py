"""One rank of the data-parallel training test (tests/test_train_distributed.py), started by torchrun:

    torchrun --nproc_per_node 2 --standalone tests/train_worker.py CHECKPOINT BATCH OUT

Each rank takes its half of the batch in BATCH (rank 0 the first rows), and for each mode (the full loss,
local_loss, each with accumulation over micro-batches too) loads the model afresh, wraps it in DDP,
runs the backward pass and one optimizer step. Rank 0 writes what the test compares with one process on the
whole batch, to OUT/<mode>.pt: the loss of the global batch, every gradient, and the weights after the step.
Then both ranks save a checkpoint and resume from it, and check what they get back (an error fails the run).
"""

import sys
import warnings
from pathlib import Path

import torch

from miniclip import CLIP
from miniclip.train import TrainConfig, Trainer, distributed, resume, save_checkpoint, towers

MODES = {  # name -> TrainConfig options
    "full": {},
    "local_loss": {"local_loss": True},
    "local_loss_accumulated": {"local_loss": True, "micro_batches": 2},
    "full_accumulated_checkpointed": {"micro_batches": 2},  # and gradient checkpointing
    "full_older_torch_gather": {},  # the gather that torch < 2.13 uses (distributed.FUNCTIONAL_GATHER)
}
CONFIG = {"lr": 1e-3, "warmup_steps": 1}  # the test's single-process run uses the same


def main(checkpoint: str, batch_file: str, out: str):
    warnings.filterwarnings("ignore", ".*all_gather is deprecated", FutureWarning)  # the older torch's gather
    distributed.init()
    rank, world = distributed.rank(), distributed.world_size()
    pixels, ids = torch.load(batch_file, weights_only=True)
    n = len(pixels) // world
    mine = slice(rank * n, (rank + 1) * n)
    for mode, options in MODES.items():
        distributed.FUNCTIONAL_GATHER = mode != "full_older_torch_gather"
        model = CLIP.from_pretrained(checkpoint)
        if "checkpointed" in mode:
            towers.checkpoint_blocks(model)
        trainer = Trainer(model, TrainConfig(**CONFIG, **options))
        loss = trainer.backward(pixels[mine], ids[mine])
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        trainer.update()
        weights = {name: p.detach().clone() for name, p in model.named_parameters()}
        result = {"loss": distributed.all_mean(loss), "rank_loss": loss, "grads": grads, "weights": weights}
        if rank == 0:
            torch.save(result, Path(out) / f"{mode}.pt")
    check_checkpoint(trainer, checkpoint, Path(out) / "checkpoint")
    torch.distributed.destroy_process_group()


def check_checkpoint(trainer: Trainer, checkpoint: str, folder: Path):
    """A checkpoint saved by every rank (rank 0 writes) and resumed by every rank: the same weights and step,
    and each rank its own random number generator's state back."""
    torch.manual_seed(100 + distributed.rank())  # a different state on each rank
    rng = torch.get_rng_state()
    save_checkpoint(trainer, folder)
    torch.manual_seed(0)
    resumed = Trainer(CLIP.from_pretrained(checkpoint), trainer.config)
    resume(resumed, folder)
    assert resumed.step == trainer.step == 1
    assert torch.equal(torch.get_rng_state(), rng)
    theirs = resumed.model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in trainer.model.state_dict().items())


if __name__ == "__main__":
    main(*sys.argv[1:])
