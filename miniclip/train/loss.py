"""CLIP's contrastive loss (Radford et al. 2021, Figure 3), on one process or gathered over many.

The paper's pseudocode, for a batch of n aligned image-text pairs:

    I_e = l2_normalize(image_encoder(I) @ W_i)      # [n, d_e]
    T_e = l2_normalize(text_encoder(T) @ W_t)       # [n, d_e]
    logits = I_e @ T_e.T * exp(t)                   # [n, n] scaled cosine similarities
    labels = arange(n)                              # pair i is the right answer for row i and column i
    loss = (cross_entropy(logits, labels, axis=0) + cross_entropy(logits, labels, axis=1)) / 2

`encode_image` and `encode_text` give the projected embeddings; this module does the rest. On several
processes (torch.distributed, see distributed.py) every rank's embeddings are gathered, with gradients
flowing back through the gather, so the negatives of each pair are the whole global batch:
- full (default): every rank builds the global (N, N) logits; each rank's loss is the single-process loss
  on the concatenated batch.
- local_loss: each rank builds only its own rows (n, N), for its images against every text and its texts
  against every image, labels offset by its rank. Each rank's loss is its share, and their mean is the
  global loss; with DDP averaging the gradients, the gradients are the same as the full mode's, for
  N x n logits instead of N x N (as open_clip's local_loss).
"""

import torch
import torch.nn.functional as F

from . import distributed


def contrastive_loss(logits_per_image: torch.Tensor, logits_per_text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The symmetric cross-entropy: each image over the texts, each text over the images, averaged.

    logits_per_image[i, j]: image i against text j; logits_per_text[i, j]: text i against image j; labels[i]:
    the column of row i's pair. On one process logits_per_text is logits_per_image.T and labels arange(n).
    """
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
              local_loss: bool = False) -> torch.Tensor:
    """The loss of a batch of pairs: image_embeds[i] and text_embeds[i] (n, d_e), as encode_image and
    encode_text return them (not normalised); logit_scale, the model's log inverse temperature.

    Computed in float32 whatever the autocast around it: the embeddings are normalised and compared in full
    precision, as the loss of a (N, N) softmax over cosine similarities scaled up to 100 needs.
    On several processes the batch is the concatenation of every rank's (see the module docstring).
    """
    with torch.autocast(image_embeds.device.type, enabled=False):
        image = F.normalize(image_embeds.float(), dim=-1)  # (n, d_e), unit length
        text = F.normalize(text_embeds.float(), dim=-1)
        scale = logit_scale.float().exp()
        all_image, all_text = distributed.gather(image), distributed.gather(text)  # (N, d_e), N = n * world
        if local_loss:  # this rank's rows only: its pairs sit at columns rank * n ... rank * n + n - 1
            labels = torch.arange(len(image), device=image.device) + distributed.rank() * len(image)
            return contrastive_loss(scale * image @ all_text.t(), scale * text @ all_image.t(), labels)
        logits_per_image = scale * all_image @ all_text.t()  # (N, N) scaled cosine similarities
        labels = torch.arange(len(all_image), device=image.device)
        return contrastive_loss(logits_per_image, logits_per_image.t(), labels)
