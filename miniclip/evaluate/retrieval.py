"""Image-text retrieval recall@K (Radford et al. 2021, section 3.1.5 and table 13: Flickr30k and MSCOCO).

Each image has one or more captions (5 in the Karpathy splits), and each caption exactly one image. As the
literature computes it (Karpathy & Fei-Fei's evaluation code, and open_clip's):
- text -> image: each caption is a query; it is a hit at K if its image is among the K best images.
- image -> text: each image is a query; it is a hit at K if ANY of its captions is among the K best captions,
  i.e. its best-ranked caption counts. R@K is the fraction of queries that are hits.

Ties (the same similarity for a right and a wrong candidate) count against the query: the rank of the right
answer is the number of WRONG candidates scoring at least as high as it (as high as the best right one for
image -> text), and a query is a hit at K when that rank is below K. This is the pessimistic rule: a model
that gives every candidate the same score gets R@K = 0, never a lucky index order. (Sorting-based code,
open_clip's `topk` included, breaks ties by position instead, so it can score a tie either way.)
"""

import torch

RECALL_AT = (1, 5, 10)
QUERY_BLOCK = 1024  # queries scored at once: the similarity matrix of COCO's 5k x 25k would be 500 MB


def text_to_image_ranks(sims: torch.Tensor, caption_image: torch.Tensor) -> torch.Tensor:
    """(n_images, n_captions) similarities -> (n_captions,) ranks: wrong images scoring >= the caption's image."""
    right = sims.gather(0, caption_image[None, :])  # (1, n_captions)
    at_least = (sims >= right).sum(dim=0)
    return at_least - 1  # the right image itself is counted once


def image_to_text_ranks(sims: torch.Tensor, caption_image: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
    """(n_queries, n_captions) similarities of the images `image_ids` -> (n_queries,) ranks: wrong captions
    scoring >= the best of the image's own captions."""
    own = caption_image[None, :] == image_ids[:, None]  # (n_queries, n_captions)
    best_own = sims.masked_fill(~own, float("-inf")).max(dim=1, keepdim=True).values
    return ((sims >= best_own) & ~own).sum(dim=1)


def recall_from_similarity(sims: torch.Tensor, caption_image, ks=RECALL_AT) -> dict:
    """R@K both ways from a full (n_images, n_captions) similarity matrix; caption j shows image caption_image[j]."""
    caption_image = check_caption_image(caption_image, sims.shape[0], sims.shape[1])
    i2t = image_to_text_ranks(sims, caption_image, torch.arange(sims.shape[0]))
    t2i = text_to_image_ranks(sims, caption_image)
    return recall_table(i2t, t2i, ks)


@torch.no_grad()
def retrieval_recall(image_embeds: torch.Tensor, text_embeds: torch.Tensor, caption_image, ks=RECALL_AT,
                     block: int = QUERY_BLOCK) -> dict:
    """R@K both ways from embeddings (cosine similarity), scoring `block` queries at a time."""
    import torch.nn.functional as F

    images, texts = F.normalize(image_embeds.float(), dim=-1), F.normalize(text_embeds.float(), dim=-1)
    caption_image = check_caption_image(caption_image, len(images), len(texts))
    i2t = torch.cat([image_to_text_ranks(images[s:s + block] @ texts.t(), caption_image,
                                         torch.arange(s, min(s + block, len(images))))
                     for s in range(0, len(images), block)])
    t2i = torch.cat([text_to_image_ranks(images @ texts[s:s + block].t(), caption_image[s:s + block])
                     for s in range(0, len(texts), block)])
    return recall_table(i2t, t2i, ks)


def recall_table(i2t_ranks: torch.Tensor, t2i_ranks: torch.Tensor, ks) -> dict:
    """{"image_to_text_R@1": fraction, ..., "text_to_image_R@10": fraction, "images": n, "captions": n}."""
    out = {}
    for direction, ranks in (("image_to_text", i2t_ranks), ("text_to_image", t2i_ranks)):
        for k in ks:
            out[f"{direction}_R@{k}"] = (ranks < k).double().mean().item()
    out["images"], out["captions"] = len(i2t_ranks), len(t2i_ranks)
    return out


def check_caption_image(caption_image, n_images: int, n_captions: int) -> torch.Tensor:
    from ..errors import InputError

    caption_image = torch.as_tensor(caption_image, dtype=torch.long)
    if caption_image.shape != (n_captions,):
        raise InputError(f"caption_image has shape {tuple(caption_image.shape)}; expected ({n_captions},), "
                         "one image index per caption")
    if n_captions and (caption_image.min() < 0 or caption_image.max() >= n_images):
        raise InputError(f"caption_image holds {caption_image.max().item()}; expected image indices 0..{n_images - 1}")
    if torch.bincount(caption_image, minlength=n_images).min() == 0:
        missing = int((torch.bincount(caption_image, minlength=n_images) == 0).nonzero()[0])
        raise InputError(f"image {missing} has no caption: every image needs at least one for image -> text recall")
    return caption_image
