"""The optimiser CLIP was trained with (Radford et al. 2021, section 2.5 and table 20 for the values):

- AdamW (Loshchilov & Hutter 2019): Adam with weight decay decoupled from the gradient, "applied to all
  weights that are not gains or biases" (the paper). Embeddings (tables of vectors, not linear maps) and the
  temperature are left out too: decay would pull logit_scale towards 0, a logit scale of 1.
- a cosine learning-rate schedule after a linear warm-up (the paper: 2,000 warm-up iterations).
- the temperature clamped after every step so that logits are scaled by at most 100: "clipped to prevent
  scaling the logits by more than 100, which we found necessary to prevent training instability".
"""

import math

import torch
import torch.nn as nn

MAX_LOGIT_SCALE = math.log(100)  # the clamp: exp(logit_scale) <= 100

# 2-d parameters that are embeddings, not weights: tables looked up or added to the tokens, and the
# attentional pooler's learned queries. (class_embedding is 1-d: excluded with the gains and biases.)
EMBEDDINGS = ("token_embedding.weight", "position_embedding", "attn_pool.query")


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether weight decay applies to the parameter `name`: matrices and convolution kernels, yes; gains,
    biases, logit_scale (all of fewer than 2 dimensions) and embeddings, no.

    "text.blocks.0.mlp.fc1.weight" -> True;  "text.blocks.0.ln_1.weight" -> False (a gain);
    "text.token_embedding.weight" -> False;  "logit_scale" -> False.
    """
    return param.ndim >= 2 and not name.endswith(EMBEDDINGS)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The trainable parameters of `model` in two AdamW groups: with weight decay, and without."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in trainable if decays(n, p)], "weight_decay": weight_decay},
        {"params": [p for n, p in trainable if not decays(n, p)], "weight_decay": 0.0},
    ]


def adamw(model: nn.Module, lr: float = 5e-4, weight_decay: float = 0.2, betas=(0.9, 0.98), eps: float = 1e-6,
          **kwargs) -> torch.optim.AdamW:
    """torch's AdamW over `model`'s trainable parameters, decay as `decays` says. The defaults are OpenAI's
    for ViT-B/32 (table 20: lr 5e-4, decay 0.2, beta2 0.98, eps 1e-6; its ResNets used beta2 0.999, eps 1e-8).
    kwargs go to torch.optim.AdamW (e.g. fused=True)."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, **kwargs)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """The learning rate at `step` as a fraction of the peak: rises linearly over warmup_steps, reaching 1 at
    the last warm-up step, then follows half a cosine down to 0 at total_steps (open_clip's cosine_lr).

    warmup 4, total 8:  steps 0..3 -> 0.25, 0.5, 0.75, 1.0;  4 -> 1.0;  6 -> 0.5;  8 -> 0.0

    A function of the step alone, so the schedule's whole state is the step count (as nanoGPT's get_lr).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def clamp_logit_scale(model: nn.Module, max_value: float = MAX_LOGIT_SCALE) -> None:
    """logit_scale into [0, ln 100] after an optimizer step, as OpenAI trained (the temperature at least 1/100)."""
    model.logit_scale.clamp_(0, max_value)
