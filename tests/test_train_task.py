"""A task small enough to learn from scratch in seconds: pictures of coloured shapes, captioned with their
colour and shape ("a red cross"). A tiny CLIP starts at chance (1/12) and must reach recall@1 >= 0.9 on
held-out pictures within 300 steps (measured: 0.95-1.0 by step 250 for four seeds of weights and data)."""

import torch

from miniclip import CLIP, CLIPConfig, TextConfig, VisionConfig, tokenize
from miniclip.train import TrainConfig, Trainer

COLOURS = {"red": (1.0, 0.1, 0.1), "green": (0.1, 0.9, 0.1), "blue": (0.2, 0.3, 1.0), "yellow": (1.0, 0.9, 0.1)}
SHAPES = ("square", "cross", "ring")
PAIRS = [(colour, shape) for colour in COLOURS for shape in SHAPES]  # 12 captions
SIZE = 16  # pixels a side, 4 x 4 patches of 4
SHAPE_SIZES = (8, 13)  # pixels across, smallest and largest
JITTER = 1  # pixels the shape's centre moves from the picture's, at most, each way
CONFIG = CLIPConfig(VisionConfig(image_size=SIZE, patch_size=4, width=64, layers=2, heads=4, mlp_width=128),
                    TextConfig(context_length=8, width=32, layers=2, heads=4, mlp_width=64), embed_dim=32)
STEPS = 300


def picture(colour: str, shape: str, g: torch.Generator) -> torch.Tensor:
    """(3, SIZE, SIZE): the shape in its colour on a noisy dark ground, its size and place drawn from `g`.

    square: filled; cross: a plus sign with arms a third of its size wide; ring: a circle's outline.
    """
    size = int(torch.randint(SHAPE_SIZES[0], SHAPE_SIZES[1] + 1, (1,), generator=g))
    top, left = ((SIZE - size) // 2 + int(v) for v in torch.randint(-JITTER, JITTER + 1, (2,), generator=g))
    y, x = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    y, x = (y - top + 0.5) / size, (x - left + 0.5) / size  # 0..1 across the shape's box
    inside = (y >= 0) & (y <= 1) & (x >= 0) & (x <= 1)
    if shape == "cross":
        inside &= ((y - 0.5).abs() <= 1 / 6) | ((x - 0.5).abs() <= 1 / 6)
    elif shape == "ring":
        inside &= ((y - 0.5) ** 2 + (x - 0.5) ** 2 - 0.15).abs() <= 0.1
    ground = 0.1 * torch.rand(3, SIZE, SIZE, generator=g)
    return torch.where(inside, torch.tensor(COLOURS[colour])[:, None, None], ground)


def pairs_batch(g: torch.Generator):
    """The 12 pairs once each, in a random order: no caption twice in a batch, so no false negatives."""
    order = torch.randperm(len(PAIRS), generator=g).tolist()
    pixels = torch.stack([picture(*PAIRS[i], g) for i in order])
    ids = tokenize([f"a {PAIRS[i][0]} {PAIRS[i][1]}" for i in order], context_length=CONFIG.text.context_length)
    return (pixels - 0.5) / 0.25, ids  # roughly zero mean and unit spread, as CLIP's normalised pixels


@torch.no_grad()
def recall_at_1(model, batches) -> float:
    """How often the right caption is the nearest to a picture, and the right picture to a caption, among
    the 12 pairs of each held-out batch."""
    hits = total = 0
    for pixels, ids in batches:
        logits, _ = model(pixels, ids)
        right = torch.arange(len(ids))
        hits += int((logits.argmax(dim=1) == right).sum() + (logits.argmax(dim=0) == right).sum())
        total += 2 * len(ids)
    return hits / total


def test_tiny_clip_learns_coloured_shapes(one_thread):
    torch.manual_seed(0)
    model = CLIP(CONFIG)
    held_out = [pairs_batch(torch.Generator().manual_seed(1000 + i)) for i in range(8)]  # 96 unseen pictures
    before = recall_at_1(model, held_out)
    assert before < 0.3

    trainer = Trainer(model, TrainConfig(total_steps=STEPS, warmup_steps=20, lr=1e-3, weight_decay=0.05))
    g = torch.Generator().manual_seed(0)
    for step in range(1, STEPS + 1):
        trainer.train_step(*pairs_batch(g))
        if step % 50 == 0 and recall_at_1(model, held_out) >= 0.95:
            break  # learnt (the ViT's forward is the same in train and eval mode)
    after = recall_at_1(model, held_out)
    print(f"recall@1 on held-out pictures: {before:.2f} before training, {after:.2f} after {step} steps")
    assert after >= 0.9
