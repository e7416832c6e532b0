"""What training changes in the towers, applied to a model from outside (miniclip/model.py knows nothing of it):

- `checkpoint_blocks(model)`: gradient checkpointing per transformer block (torch.utils.checkpoint,
  non-reentrant). Only each block's input is kept for backward; the block is run again there to get the rest.
  About a third more compute for the activations of one block instead of all of them.
- `lock(tower, unlocked_blocks=0)`: a frozen tower (LiT, Zhai et al. 2022, "Locked-image Tuning"): no
  gradient, no change, BatchNorm statistics kept; or all but its last N blocks and its head.
- `train_batchnorm(model)`: the ResNets' BatchNorm with batch statistics in train mode and running averages
  updated, as it was trained (miniclip/resnet.py's BatchNorm is inference-only by design).

None of them changes a parameter's name, so the state dict, and the files `miniclip.weights.save` writes,
stay those of the plain model.
"""

import functools

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from miniclip.model import TextTransformer, VisionTransformer
from miniclip.resnet import BN_EPS, BatchNorm, ModifiedResNet

# What each tower computes after its blocks, from the blocks' output to the embedding. lock(..., unlocked_blocks=N)
# trains these along with the last N blocks: the embedding cannot adapt without its head.
HEADS = {
    VisionTransformer: ("attn_pool", "ln_post", "proj"),
    TextTransformer: ("ln_final", "proj"),
    ModifiedResNet: ("attnpool",),
}
# torch.nn.BatchNorm2d's default, which OpenAI trained its ResNets with (clip/model.py builds nn.BatchNorm2d)
BN_MOMENTUM = 0.1


def blocks(tower: nn.Module) -> list[nn.Module]:
    """The tower's residual blocks in order: a transformer's `blocks`, a ResNet's bottlenecks stage by stage."""
    if isinstance(tower, ModifiedResNet):
        return [*tower.layer1, *tower.layer2, *tower.layer3, *tower.layer4]
    return list(tower.blocks)


def head(tower: nn.Module) -> list[nn.Module]:
    return [m for name in HEADS[tower_class(tower)] if (m := getattr(tower, name, None)) is not None]


def tower_class(tower: nn.Module) -> type:
    """The miniclip class `tower` is, or subclasses (miniclip.speedups swaps in subclasses)."""
    for cls in HEADS:
        if isinstance(tower, cls):
            return cls
    raise TypeError(f"{type(tower).__name__} is not one of miniclip's towers ({', '.join(c.__name__ for c in HEADS)})")


# -----------------------------------------------------------------------------
# Gradient checkpointing


def checkpoint_blocks(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Gradient checkpointing for every transformer block of `model` (a CLIP). A ResNet tower is left as it
    is: its BatchNorm would update its running statistics again when a block is recomputed (open_clip
    does not checkpoint it either). enabled=False undoes it.

    Each block's forward is replaced, on the instance, by one that runs it under torch.utils.checkpoint while
    autograd records; without autograd (inference, torch.no_grad) it runs as it is. Hooks on a block fire
    once; hooks on the modules inside it fire again when backward recomputes the block.
    """
    for tower in (model.visual, model.text):
        if isinstance(tower, ModifiedResNet):
            continue
        for block in blocks(tower):
            block.__dict__.pop("forward", None)  # the class's forward again
            if enabled:
                block.forward = checkpointed(block.forward)
    return model


def checkpointed(forward):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        # non-reentrant: the recomputation hooks into autograd itself, so inputs need not require grad and
        # it composes with DDP and autocast (whose state is recorded and restored for the recomputation)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run


# -----------------------------------------------------------------------------
# Locking (LiT)


def lock(tower: nn.Module, unlocked_blocks: int = 0) -> nn.Module:
    """Freezes `tower` (model.visual or model.text): its parameters get no gradient, so the optimizer
    (built from the parameters that require one) never changes them, and its BatchNorm layers, if any, stay
    inference-only (running statistics, not updated).

    unlocked_blocks=N leaves the last N blocks and the tower's head (what follows the blocks: the final
    LayerNorm and projection, a ResNet's attention pool) trainable. LiT locks the whole image tower (N=0).
    """
    tower_blocks = blocks(tower)
    if not 0 <= unlocked_blocks <= len(tower_blocks):
        raise ValueError(f"unlocked_blocks={unlocked_blocks}; this tower has {len(tower_blocks)} blocks")
    tower.requires_grad_(False)
    if unlocked_blocks:
        for trainable in tower_blocks[len(tower_blocks) - unlocked_blocks:] + head(tower):
            trainable.requires_grad_(True)
    for parent in list(tower.modules()):  # trainable BatchNorm in the frozen part back to inference-only
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d) and not child.weight.requires_grad:
                setattr(parent, name, inference_batchnorm(child))
    return tower


# -----------------------------------------------------------------------------
# BatchNorm training (the ResNet towers)


def train_batchnorm(model: nn.Module) -> nn.Module:
    """Replaces each trainable inference-only BatchNorm of `model` with torch's nn.BatchNorm2d holding the same
    tensors, so that in train mode it normalises with the batch's statistics and updates the running ones
    (momentum 0.1, as OpenAI's nn.BatchNorm2d), and in eval mode computes exactly what it did before.

    BatchNorm in a locked (frozen) part is left inference-only; lock first, then call this. The state dict keeps
    its keys (no num_batches_tracked: with a fixed momentum it is never read). Statistics are per process; on
    GPUs, nn.SyncBatchNorm.convert_sync_batchnorm(model) makes them global-batch statistics.
    """
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is BatchNorm and child.weight.requires_grad:
                setattr(parent, name, trainable_batchnorm(child))
    return model


def trainable_batchnorm(bn: BatchNorm) -> nn.BatchNorm2d:
    out = nn.BatchNorm2d(len(bn.weight), eps=BN_EPS, momentum=BN_MOMENTUM, device="meta")
    out.weight, out.bias = bn.weight, bn.bias  # the same Parameters: an optimizer built before still holds them
    out.running_mean, out.running_var = bn.running_mean, bn.running_var
    out.num_batches_tracked = None
    return out.train(bn.training)


def inference_batchnorm(bn: nn.BatchNorm2d) -> BatchNorm:
    with torch.device("meta"):
        out = BatchNorm(bn.num_features)
    out.weight, out.bias = bn.weight, bn.bias
    out.running_mean, out.running_var = bn.running_mean, bn.running_var
    return out.train(bn.training)
