"""Zero-shot classification (Radford et al. 2021, section 3.1.4): the label names are the classifier.

Each label is written into prompt templates ("a photo of a {}."), the texts are embedded, and each label's
weight vector is the mean of its normalised text embeddings, normalised again ("prompt ensembling").
An image's probabilities are the softmax of its scaled cosine similarity with those vectors.
"""

import re
import string
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InputError, InputTypeError, TokenizerError
from .model import CLIP

# The paper's default prompt: a bare label is often ambiguous ("boxer": a dog or an athlete?) and
# rarely a whole caption, which is what the text encoder saw in training.
DEFAULT_TEMPLATES = ("a photo of a {}.",)


@dataclass
class ZeroShotClassifier:
    labels: list[str]
    weights: torch.Tensor  # (n_labels, embed_dim), unit rows
    logit_scale: torch.Tensor  # exp of the model's logit_scale: 100 for the released checkpoints

    def logits(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """(n, embed_dim) image embeddings, normalised or not -> (n, n_labels) scaled cosine similarities."""
        image = F.normalize(image_embeds.to(self.weights.device, self.weights.dtype), dim=-1)
        return self.logit_scale * image @ self.weights.t()

    def __call__(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """(n, embed_dim) image embeddings -> (n, n_labels) probabilities (each row sums to 1)."""
        return self.logits(image_embeds).softmax(dim=-1)


# Prompts per text-encoder forward pass. ImageNet's protocol is 1,000 classes x 80 templates = 80,000
# prompts. In one pass even the tiny test model's peak memory grows by 1.6 GB (measured; its prompts cut to
# ~25 tokens), ViT-B/32's MLP activations alone by 80,000 x 25 x 2048 floats = 16 GB a layer. In batches
# the growth is about one batch's: 80 MB for the tiny model (tests/test_eval_zeroshot.py), ~430 MB for
# ViT-B/32 (python -m benchmarks.evaluate).
TEXT_BATCH_SIZE = 256


@torch.no_grad()
def zero_shot_classifier(model: CLIP, labels, templates=DEFAULT_TEMPLATES, tokenize=None,
                         truncate: bool = False, batch_size: int = TEXT_BATCH_SIZE,
                         progress: bool = False) -> ZeroShotClassifier:
    """Builds the classifier for `labels` from `templates` (strings with one "{}" for the label).

    Use: `probs = classifier(model.encode_image(pixels))`. `tokenize(texts, context_length=...)` defaults to
    `model.tokenize`, which refuses models trained with a tokenizer other than OpenAI's: pass that one here.
    truncate: cut prompts longer than the model's context instead of refusing them; passed on to `tokenize`
    (to a tokenize of your own only when True, so one without that argument still works).
    batch_size: prompts embedded per forward pass (memory is bounded by one batch, whatever the number of
    labels x templates); progress: a tqdm bar over the prompts on stderr.
    """
    labels, templates = list(check_strings("labels", labels)), list(check_strings("templates", templates))
    for i, t in enumerate(templates):
        check_template(t, i)
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size}; expected at least 1 prompt per forward pass")
    from tqdm.auto import tqdm

    n_prompts = len(labels) * len(templates)
    sums = None  # (n_labels, embed_dim): each label's sum of normalised prompt embeddings
    with tqdm(total=n_prompts, desc="embedding prompts", unit="prompt", disable=not progress, delay=1.0,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for start in range(0, n_prompts, batch_size):
            rows = range(start, min(start + batch_size, n_prompts))  # label-major: row = label * T + template
            texts = [templates[r % len(templates)].format(labels[r // len(templates)]) for r in rows]
            ids = tokenize_prompts(model, texts, rows, labels, templates, tokenize, truncate)
            embeds = F.normalize(model.encode_text(ids).float(), dim=-1)
            if sums is None:
                sums = embeds.new_zeros(len(labels), embeds.shape[1])
            sums.index_add_(0, torch.tensor([r // len(templates) for r in rows], device=embeds.device), embeds)
            bar.update(len(rows))
    weights = F.normalize(sums / len(templates), dim=-1)  # the mean of the normalised embeddings, renormalised
    return ZeroShotClassifier(labels, weights, model.logit_scale.exp().float())


def tokenize_prompts(model, texts, rows, labels, templates, tokenize, truncate) -> torch.Tensor:
    """One batch of prompts -> ids; a prompt too long names its label and template (not its batch index)."""
    try:
        if tokenize is None:
            return model.tokenize(texts, truncate=truncate)
        extra = {"truncate": True} if truncate else {}
        return tokenize(texts, context_length=model.config.text.context_length, **extra).to(model.device)
    except TokenizerError as e:
        found = re.match(r"text (\d+) is", str(e))
        if found is None:
            raise
        row = rows[int(found.group(1))]
        label, template = row // len(templates), row % len(templates)
        raise TokenizerError(f"the prompt for labels[{label}] from templates[{template}]: "
                             + str(e).replace(f"text {found.group(1)} is", "it is", 1)) from None


def check_template(template: str, index: int) -> None:
    """A template is filled with `template.format(label)`, so it must hold exactly one bare "{}" and no
    other replacement field: "a {} of {x}" would raise KeyError there, "{0}" or "{:>9}" would work but
    are refused as likely mistakes. Literal braces are written "{{" and "}}", as str.format wants."""
    what = f"templates[{index}] {template!r}"
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as e:  # a lone "{" or "}"
        raise InputError(f"{what} is not a str.format template ({e}); write literal braces as '{{{{' and "
                         "'}}'") from None
    if fields != [("", "", None)]:
        found = ", ".join("{" + name + ("!" + c if c else "") + (":" + spec if spec else "") + "}"
                          for name, spec, c in fields) or "none"
        raise InputError(f"{what} must contain exactly one '{{}}' where the label goes and no other field; "
                         f"found: {found} (write literal braces as '{{{{' and '}}}}')")


def check_strings(what: str, values) -> tuple[str, ...]:
    if isinstance(values, str):
        values = (values,)
    values = tuple(values)
    if not values:
        raise InputError(f"{what} is empty: give at least one")
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise InputTypeError(f"{what}[{i}] is a {type(v).__name__}; expected a string")
    return values
