"""One training step of CLIP: forward, the contrastive loss, backward, AdamW, the schedule and the clamp.

    model = miniclip.CLIP.from_pretrained("ViT-B/32")          # the plain model (not miniclip.load's)
    trainer = Trainer(model, TrainConfig(total_steps=10_000, precision="bf16", micro_batches=4))
    for pixel_values, input_ids in batches:
        loss = trainer.train_step(pixel_values, input_ids)

Set the model up first, with miniclip.train.towers: lock a tower, checkpoint the blocks, train the ResNets'
BatchNorm. Under torchrun (miniclip.train.distributed.init()) the same code trains data-parallel: each
process brings its share of the batch, and the loss is over the global batch (see loss.py).

What the step does besides the paper's arithmetic, each optional (TrainConfig):
- mixed precision: the forward and backward run under autocast in bf16 or fp16; the weights, their
  gradients and AdamW's state stay fp32 (the "master weights"), and so does the loss. fp16's narrow range
  needs the loss scaled up before backward and the gradients unscaled before the step (torch's GradScaler,
  which skips a step whose gradients overflowed); bf16 has fp32's range and needs none.
- gradient accumulation that keeps the contrastive batch whole: see `Trainer.accumulated_backward`. (Plain
  accumulation, a loss per micro-batch, would shrink each pair's negatives to its micro-batch.)
- captions cut after the batch's last end-of-text token (data.trim_padding): same gradients, less work.
"""

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from . import distributed
from .data import trim_padding
from .loss import clip_loss
from .optim import adamw, clamp_logit_scale, warmup_cosine

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainConfig:
    total_steps: int = 10_000  # the cosine schedule reaches 0 here
    warmup_steps: int = 2000  # the paper's linear warm-up
    lr: float = 5e-4  # the peak; OpenAI's for ViT-B/32 (the paper, table 20), with the three below
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    precision: str = "fp32"  # or "bf16", "fp16": autocast, with fp32 weights and optimizer state
    micro_batches: int = 1  # > 1: accumulation over this many parts of each batch, the loss still over all
    local_loss: bool = False  # several processes: each builds its own rows of the logits (loss.py)
    trim_padding: bool = True  # cut captions after the batch's last end-of-text token (same numbers)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}; expected one of {list(PRECISIONS)}")
        if self.micro_batches < 1:
            raise ValueError(f"micro_batches={self.micro_batches}; expected 1 or more")


class Towers(nn.Module):
    """CLIP as training calls it: (pixels, ids) -> (image embeddings, text embeddings, logit_scale).

    DDP synchronises the gradients of what its module's forward computes, and CLIP's forward returns
    logits, which the gathered loss cannot use: DDP wraps this instead. It holds the CLIP as `clip` and adds
    no parameter of its own.
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values, input_ids):
        return self.clip.encode_image(pixel_values), self.clip.encode_text(input_ids), self.clip.logit_scale


class Trainer:
    """The model, its data-parallel wrapper, AdamW, the grad scaler and the step count (which sets the
    learning rate: optim.warmup_cosine).

    model: a CLIP with fp32 weights, on its device, set up as wanted (towers.py). On several processes it is
    wrapped in DDP (distributed.wrap); `model` stays the CLIP itself.
    """

    def __init__(self, model: nn.Module, config: TrainConfig = TrainConfig()):
        if model.dtype != torch.float32:
            raise ValueError(f"the model's weights are {model.dtype}: train fp32 weights, and pick mixed "
                             "precision with TrainConfig(precision='bf16' or 'fp16')")
        self.model, self.config = model.train(), config
        self.device = model.device
        self.net = distributed.wrap(Towers(model))
        self.optimizer = adamw(model, config.lr, config.weight_decay, config.betas, config.eps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.step = 0  # optimizer steps taken; also the data position (data.ShuffledBatches)

    def train_step(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """One optimizer step on a batch (this process's share of it). Returns the loss, detached."""
        loss = self.backward(pixel_values, input_ids)
        self.update()
        return loss

    def backward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The loss of the batch and its gradients, added to each parameter's .grad (scaled, for fp16)."""
        if len(pixel_values) != len(input_ids):
            raise ValueError(f"{len(pixel_values)} images and {len(input_ids)} texts: expected as many of each")
        # k parts as equal as can be: a batch that lost an unreadable image (7 rows for 2 parts) still steps
        k = min(self.config.micro_batches, len(pixel_values))
        if k > 1:
            return self.accumulated_backward(pixel_values.tensor_split(k), input_ids.tensor_split(k))
        with self.autocast():
            image, text, logit_scale = self.embed(pixel_values, input_ids)
        loss = clip_loss(image, text, logit_scale, self.config.local_loss)
        self.scaler.scale(loss).backward()
        return loss.detach()

    def accumulated_backward(self, pixel_parts, id_parts) -> torch.Tensor:
        """Gradient accumulation that keeps the whole batch's negatives (open_clip's accum_freq; GradCache,
        Gao et al. 2021). First every micro-batch is embedded without autograd. Then, one micro-batch at a
        time, it is embedded again with autograd, its embeddings take the place of the cached ones, and the
        loss of the whole batch is backpropagated: the gradient reaches this micro-batch's activations only,
        so the passes' gradients add up to the whole batch's, for one micro-batch's activations at a time
        and about a third more compute (a second forward). logit_scale takes part in every pass's loss but
        gets its gradient from the last pass alone (detached in the others), or it would get it k times.
        BatchNorm in train mode normalises each micro-batch with its own statistics, in both passes alike, and
        updates its running statistics in the second pass only.
        """
        with torch.no_grad(), self.autocast(), batchnorm_statistics_kept(self.model):
            cached = [self.embed(px, ids)[:2] for px, ids in zip(pixel_parts, id_parts)]
        images, texts = [list(x) for x in zip(*cached)]
        k = len(pixel_parts)
        for j, (px, ids) in enumerate(zip(pixel_parts, id_parts)):
            last = j == k - 1
            with self.gradient_sync(last):  # ranks exchange gradients once, after the last pass
                with self.autocast():
                    image, text, logit_scale = self.embed(px, ids)
                loss = clip_loss(torch.cat(images[:j] + [image] + images[j + 1:]),
                                 torch.cat(texts[:j] + [text] + texts[j + 1:]),
                                 logit_scale if last else logit_scale.detach(), self.config.local_loss)
                self.scaler.scale(loss).backward()
        return loss.detach()

    def update(self):
        """The optimizer step on the gradients so far at this step's learning rate, then the clamp; gradients
        cleared."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.scaler.step(self.optimizer)  # unscales first; skips the step if fp16 gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        clamp_logit_scale(self.model)
        self.step += 1

    @property
    def lr(self) -> float:
        """The learning rate of the next step: warm-up, then cosine decay."""
        return self.config.lr * warmup_cosine(self.step, self.config.warmup_steps, self.config.total_steps)

    def embed(self, pixel_values, input_ids):
        if self.config.trim_padding:
            input_ids = trim_padding(input_ids, self.model.config.text)
        return self.net(pixel_values, input_ids)

    def autocast(self):
        dtype = PRECISIONS[self.config.precision]
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def gradient_sync(self, sync: bool):
        """A context in which backward does (sync=True) or does not exchange gradients among the ranks."""
        if sync or not distributed.is_distributed():
            return contextlib.nullcontext()
        return self.net.no_sync()

    def state_dict(self) -> dict:
        """What resuming needs besides the weights: the optimizer, the grad scaler, and the step (which is
        also the schedule's position and the data's)."""
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict):
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]



@contextlib.contextmanager
def batchnorm_statistics_kept(model: nn.Module):
    """BatchNorm layers in train mode still normalise with the batch's statistics, but leave their running
    statistics as they are (momentum 0: running = 1 * running + 0 * batch)."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
