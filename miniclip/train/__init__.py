"""Training CLIP: the paper's contrastive loss, its optimiser, and what large batches need.

loss.py         the symmetric cross-entropy of Figure 3, on one process or gathered from every rank
optim.py        AdamW without decay on gains, biases, embeddings and logit_scale; warm-up + cosine; the clamp
towers.py       gradient checkpointing per block; locking a tower or all but its last blocks (LiT);
                the ResNets' BatchNorm in training mode
data.py         shuffled batches whose position is the step count; captions cut after their last token
distributed.py  torchrun's process group, the differentiable gather, DDP
trainer.py      one step: autocast, accumulation over micro-batches that keeps every negative, update
state.py        checkpoints: the model in the transformers layout, and a training state that resumes exactly

`miniclip train` (command.py) adds what a run from the shell needs: datasets.py (pairs listed in a .csv,
.jsonl or caption folder), shards.py (WebDataset shards, streamed), augment.py (random resized crops),
validation.py (recall@k and zero-shot accuracy every N steps).

    from miniclip.train import Trainer, TrainConfig, towers
    model = miniclip.CLIP.from_pretrained("ViT-B/32")
    towers.checkpoint_blocks(model)
    trainer = Trainer(model, TrainConfig(total_steps=10_000, precision="bf16"))
    for pixel_values, input_ids in batches:
        trainer.train_step(pixel_values, input_ids)

The core (miniclip/model.py, config.py, resnet.py) knows nothing of this package.
"""

from . import distributed, towers
from .data import ShuffledBatches, trim_padding
from .loss import clip_loss, contrastive_loss
from .optim import adamw, clamp_logit_scale, param_groups, warmup_cosine
from .state import resume, save_checkpoint, save_model
from .trainer import Towers, TrainConfig, Trainer

__all__ = ["Trainer", "TrainConfig", "Towers", "clip_loss", "contrastive_loss", "adamw", "param_groups",
           "warmup_cosine", "clamp_logit_scale", "ShuffledBatches", "trim_padding", "save_checkpoint",
           "resume", "save_model", "towers", "distributed"]
