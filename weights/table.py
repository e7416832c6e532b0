"""Conversion tables: how each miniclip tensor is made from the tensors of a published layout.

A format module (e.g. `hf.py`) writes its table as a list of entries; this module applies it in either
direction and reports, by name, everything that is missing, unexpected or of the wrong shape. There is
no matching by similarity: a key is either in the table or an error.

Entries come in three kinds, enough for every layout so far:
- renamed(ours, theirs):        the same tensor under another name
- fused(ours, [a, b, c]):       ours is their tensors concatenated along dim 0 (q, k, v -> qkv)
- transposed(ours, theirs):     ours is their matrix transposed (OpenAI's projections, used as x @ P,
                                against nn.Linear's weight, used as x @ W.T)
- split([a, b, c], theirs):     ours are their tensor cut in equal parts along dim 0 (open_clip's stacked
                                in_proj_weight -> the attentional pooler's q, k, v)
"""

from dataclasses import dataclass

import torch

from miniclip.errors import CheckpointError


@dataclass(frozen=True)
class Entry:
    ours: str
    theirs: tuple[str, ...]  # one name: a rename; several: concatenated along dim 0
    transpose: bool = False  # ours = theirs.T (one 2-d tensor)
    part: tuple[int, int] | None = None  # (i, n): ours = the i-th of n equal parts of theirs along dim 0


def renamed(ours: str, theirs: str) -> Entry:
    return Entry(ours, (theirs,))


def fused(ours: str, theirs: list[str]) -> Entry:
    return Entry(ours, tuple(theirs))


def transposed(ours: str, theirs: str) -> Entry:
    return Entry(ours, (theirs,), transpose=True)


def split(ours: list[str], theirs: str) -> list[Entry]:
    return [Entry(name, (theirs,), part=(i, len(ours))) for i, name in enumerate(ours)]


@dataclass(frozen=True)
class Plan:
    layout: str  # a human name for messages: "transformers", "openai", ...
    entries: list[Entry]
    ignored: set[str]  # their keys that hold no parameters (e.g. position_ids buffers)

    def to_miniclip(self, sd: dict, source: str) -> dict:
        """Their state dict -> ours. Raises CheckpointError naming every missing and unexpected key."""
        needed = {name for e in self.entries for name in e.theirs}
        missing = sorted(needed - sd.keys())
        unexpected = sorted(sd.keys() - needed - self.ignored)
        if missing or unexpected:
            raise CheckpointError(mismatch_message(source, self.layout, missing, unexpected))
        out = {}
        for e in self.entries:
            parts = [sd[name] for name in e.theirs]
            out[e.ours] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
            if e.part:
                i, n = e.part
                out[e.ours] = out[e.ours].chunk(n, dim=0)[i]
            if e.transpose:
                out[e.ours] = out[e.ours].t().contiguous()
        return out

    def from_miniclip(self, sd: dict) -> dict:
        """Our state dict -> theirs: the exact inverse of `to_miniclip` (fused tensors split in equal parts)."""
        out, pieces = {}, {}
        for e in self.entries:
            tensor = sd[e.ours].t() if e.transpose else sd[e.ours]
            if e.part:  # gathered below, in order
                pieces.setdefault(e.theirs[0], {})[e.part[0]] = tensor
                continue
            parts = tensor.chunk(len(e.theirs), dim=0) if len(e.theirs) > 1 else (tensor,)
            out.update({name: part.contiguous() for name, part in zip(e.theirs, parts)})
        out.update({name: torch.cat([p[i] for i in sorted(p)], dim=0) for name, p in pieces.items()})
        return out


def mismatch_message(source: str, layout: str, missing: list[str], unexpected: list[str]) -> str:
    def listing(keys):
        shown = ", ".join(keys[:8])
        return shown + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

    lines = [f"{source} does not match the {layout} layout of the model its config describes:"]
    if missing:
        lines.append(f"  missing tensors: {listing(missing)}")
    if unexpected:
        lines.append(f"  unexpected tensors: {listing(unexpected)}")
    return "\n".join(lines)


def check_shapes(expected: dict, sd: dict, source: str) -> None:
    """Every tensor's shape against the model's (name -> torch.Size), all problems in one error."""
    wrong = [f"  {k}: found {tuple(sd[k].shape)}, expected {tuple(shape)}"
             for k, shape in expected.items() if sd[k].shape != shape]
    if wrong:
        raise CheckpointError(
            f"{source} has tensors of the wrong shape for the model its config describes "
            f"(does config.json belong to these weights?):\n" + "\n".join(wrong[:20])
        )
