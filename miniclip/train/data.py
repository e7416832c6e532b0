"""Feeding the model: which examples make each batch, and captions cut to what the text tower reads.

- `ShuffledBatches`: each epoch a fresh shuffle of the data set, cut into global batches and split among the
  ranks. The batch at step s is a function of (seed, s) alone, so the data position of a run is its step
  count: a resumed run starts the sampler at its step and sees exactly the batches it would have seen, with
  no sampler state to save, and however far ahead a DataLoader has prefetched.
- `trim_padding`: drops the columns after the batch's last end-of-text token. With causal attention no
  position changes the ones before it, and the embedding is read at the end-of-text token, so the cut changes
  no embedding and no gradient (tests/test_train.py); captions are far shorter than the 77 positions they are
  padded to, and the text tower's work shrinks with them (ViT-B/32 training step, benchmarks/train.py).
"""

import torch

from miniclip.config import TextConfig


class ShuffledBatches:
    """Lists of example indices, one per step: `DataLoader(dataset, batch_sampler=ShuffledBatches(...))`.

    n: examples in the data set; batch_size: per rank. Each global batch (batch_size * world_size examples)
    is cut from a shuffle of 0..n-1 made from `seed + epoch`; rank r takes its r-th slice. The examples an
    epoch's shuffle leaves over (n mod the global batch) are skipped that epoch. start: the first step to
    yield (a resumed run's step); stop: the step to end before (None: never end).
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, start: int = 0, stop: int | None = None,
                 rank: int = 0, world_size: int = 1):
        if batch_size * world_size > n:
            raise ValueError(f"a global batch of {batch_size} x {world_size} ranks is more than the {n} examples")
        self.n, self.batch_size, self.seed, self.start, self.stop = n, batch_size, seed, start, stop
        self.rank, self.world_size = rank, world_size
        self.per_epoch = n // (batch_size * world_size)  # global batches in an epoch

    def __iter__(self):
        step, epoch, order = self.start, None, None
        while self.stop is None or step < self.stop:
            if step // self.per_epoch != epoch:
                epoch = step // self.per_epoch
                order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            first = (step % self.per_epoch * self.world_size + self.rank) * self.batch_size
            yield order[first:first + self.batch_size].tolist()
            step += 1

    def __len__(self):
        if self.stop is None:
            raise TypeError("an endless ShuffledBatches (stop=None) has no length")
        return max(0, self.stop - self.start)


def trim_padding(input_ids: torch.Tensor, text: TextConfig) -> torch.Tensor:
    """(B, T) ids -> (B, T') with T' the position after the batch's last first-end-of-text token; unchanged for a
    text tower that is not causal or not read at the end-of-text token, where every position counts.

    [[SOT, a, EOT, 0, 0], [SOT, a, b, EOT, 0]] -> [[SOT, a, EOT, 0], [SOT, a, b, EOT]]
    """
    if not (text.causal and text.pool == "eot") or input_ids.numel() == 0:
        return input_ids
    is_eot = input_ids == text.eot_token_id
    if not bool(is_eot.any(dim=1).all()):
        return input_ids  # a row without one: encode_text refuses it, with a message saying why
    return input_ids[:, : int(is_eot.int().argmax(dim=1).max()) + 1]
