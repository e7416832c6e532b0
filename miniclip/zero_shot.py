"""Zero-shot classification (Radford et al. 2021, section 3.1.4): the label names are the classifier.

Each label is written into prompt templates ("a photo of a {}."), the texts are embedded, and each label's
weight vector is the mean of its normalised text embeddings, normalised again ("prompt ensembling").
An image's probabilities are the softmax of its scaled cosine similarity with those vectors.
"""

import string
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InputError, InputTypeError
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


@torch.no_grad()
def zero_shot_classifier(model: CLIP, labels, templates=DEFAULT_TEMPLATES, tokenize=None,
                         truncate: bool = False) -> ZeroShotClassifier:
    """Builds the classifier for `labels` from `templates` (strings with one "{}" for the label).

    Use: `probs = classifier(model.encode_image(pixels))`. `tokenize(texts, context_length=...)` defaults to
    `model.tokenize`, which refuses models trained with a tokenizer other than OpenAI's: pass that one here.
    truncate: cut prompts longer than the model's context instead of refusing them; passed on to `tokenize`
    (to a tokenize of your own only when True, so one without that argument still works).
    """
    labels, templates = list(check_strings("labels", labels)), list(check_strings("templates", templates))
    for i, t in enumerate(templates):
        check_template(t, i)
    texts = [t.format(label) for label in labels for t in templates]  # label-major: rows [label, template]
    if tokenize is None:
        ids = model.tokenize(texts, truncate=truncate)
    else:
        extra = {"truncate": True} if truncate else {}
        ids = tokenize(texts, context_length=model.config.text.context_length, **extra).to(model.device)
    embeds = F.normalize(model.encode_text(ids).float(), dim=-1)
    weights = F.normalize(embeds.view(len(labels), len(templates), -1).mean(dim=1), dim=-1)
    return ZeroShotClassifier(labels, weights, model.logit_scale.exp().float())


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
