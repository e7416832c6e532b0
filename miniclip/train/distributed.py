"""Data parallelism on torch.distributed: one process per device, started by torchrun.

    torchrun --nproc_per_node 8 my_training.py     # NCCL between GPUs, gloo between CPU processes

Nothing here is home-made; these are the few calls training needs, with what each one is for:
- `init()` joins the process group that torchrun describes in the environment and picks this process's device.
- `gather(x)` concatenates every rank's x in rank order, with gradients: the functional collective
  all_gather_single (torch >= 2.13; older torch: torch.distributed.nn.functional.all_gather, deprecated in
  2.13 for it, same arithmetic), whose backward sends each rank the sum of the gradients that every rank's loss put on its
  piece (a reduce-scatter). So when each rank computes the loss of the global batch, each rank's embeddings get
  world_size times their gradient, and DDP's average of the parameter gradients over the ranks gives exactly
  the single-process gradient of the global batch (tests/test_train_distributed.py checks it).
- `wrap(module)` is DistributedDataParallel, which averages the parameter gradients over the ranks during
  backward. (FSDP, which would also split the weights among the ranks, refuses CLIP's logit_scale, a 0-d
  parameter; every released CLIP fits on one device for DDP: ViT-L/14's fp32 weights, gradients and AdamW
  state take 6.8 GB.)
Every rank must bring a batch of the same size: all_gather needs equal shapes.
"""

import os

import torch
import torch.distributed as dist
import torch.nn as nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process is the one that writes files and prints (rank 0)."""
    return rank() == 0


def init() -> torch.device:
    """Joins torchrun's process group, if started by torchrun (RANK and WORLD_SIZE in the environment), and
    returns this process's device: its GPU (LOCAL_RANK) with NCCL, or the CPU with gloo.
    Without torchrun: no group, and the first GPU if there is one, else the CPU."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return torch.device("cuda" if cuda else "cpu")
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
        return device
    dist.init_process_group("gloo")
    return torch.device("cpu")


def gather(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) on each rank -> (world_size * n, ...), rank 0's rows first; gradients flow back to each rank's x.
    On one process, x itself."""
    if not is_distributed():
        return x
    if FUNCTIONAL_GATHER:
        from torch.distributed._functional_collectives import all_gather_single

        return all_gather_single(x, 0, dist.group.WORLD)
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x))


# all_gather_single's autograd (a reduce-scatter in backward) is there from torch 2.13; before, the older
# differentiable all_gather, which 2.13 deprecates. A module constant so that tests can run both.
FUNCTIONAL_GATHER = torch.torch_version.TorchVersion(torch.__version__) >= (2, 13)

def wrap(module: nn.Module) -> nn.Module:
    """`module` ready for data-parallel training: itself on one process, else DistributedDataParallel (every
    rank holds the whole model; gradients are averaged over the ranks during backward)."""
    if not is_distributed():
        return module
    device_ids = [module_device(module)] if module_device(module).type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def all_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of x over the ranks (for reporting, e.g. local_loss's per-rank losses); x on one process."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world_size()
