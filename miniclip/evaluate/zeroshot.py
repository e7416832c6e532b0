"""Zero-shot classification accuracy (Radford et al. 2021, section 3.1): top-1, top-5 and per class.

The classifier is miniclip.zero_shot_classifier: each class's prompts (templates x class name) embedded in
bounded batches, normalised, averaged, renormalised. For ImageNet's 1,000 classes x 80 templates that is
80,000 prompts (about 10 minutes for ViT-B/32 on a laptop CPU), so the command keeps the result on disk,
keyed like the image-embedding cache (embedding_cache.model_key) plus the class names and templates.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..embedding_cache import atomic_save
from ..zero_shot import TEXT_BATCH_SIZE, ZeroShotClassifier, zero_shot_classifier

CLASSIFIER_CACHE_VERSION = 1  # bump when what a cached classifier holds changes


@dataclass
class ZeroShotResult:
    probs: torch.Tensor  # (n_images, n_classes): softmax of 100 x cosine similarity
    predictions: torch.Tensor  # (n_images, k): the k most probable classes, best first
    metrics: dict  # top1, top5, mean_per_class, per_class (see classification_metrics)


def zero_shot_results(classifier: ZeroShotClassifier, image_embeds: torch.Tensor, targets) -> ZeroShotResult:
    """Probabilities, the top-5 predictions and the metrics of `image_embeds` against class indices `targets`."""
    logits = classifier.logits(image_embeds)
    metrics = classification_metrics(logits, targets, classifier.labels)
    k = min(5, logits.shape[1])
    return ZeroShotResult(logits.softmax(dim=-1), logits.topk(k, dim=-1).indices, metrics)


def classification_metrics(scores: torch.Tensor, targets, classnames: list[str]) -> dict:
    """Accuracy of (n, n_classes) `scores` (logits or probabilities) against (n,) class indices.

    top1, top5: the fraction of images whose class is the best, or among the 5 best (among all classes when
    there are fewer than 5). per_class: each class's top-1 accuracy over its images (None without images);
    mean_per_class: their mean over the classes that have images, the paper's metric for unbalanced sets.
    Duplicate class names (ImageNet's two "missile"s) stay separate classes, as in the published protocol.
    """
    targets = torch.as_tensor(targets, dtype=torch.long, device=scores.device)
    best = scores.topk(min(5, scores.shape[1]), dim=-1).indices
    hit1 = best[:, 0] == targets
    hit5 = (best == targets[:, None]).any(dim=-1)
    per_class = []
    for c, name in enumerate(classnames):
        mine = targets == c
        n = int(mine.sum())
        per_class.append({"class": name, "index": c, "images": n,
                          "top1": hit1[mine].double().mean().item() if n else None})
    seen = [row["top1"] for row in per_class if row["images"]]
    return {"top1": hit1.double().mean().item(), "top5": hit5.double().mean().item(),
            "mean_per_class": sum(seen) / len(seen), "images": len(targets), "classes": len(classnames),
            "per_class": per_class}


def cached_zero_shot_classifier(model, labels, templates, key: dict | None, cache_dir: Path | None,
                                truncate: bool = False, batch_size: int = TEXT_BATCH_SIZE,
                                progress: bool = False) -> ZeroShotClassifier:
    """zero_shot_classifier, kept in <cache_dir>/classifiers/ under the model's key (None: no cache).

    `key` is embedding_cache.model_key(...): weights and config files (real path, size, mtime), dtype,
    device, preprocessing, miniclip's version. With the labels, templates and truncate it names the file;
    the labels and templates are also stored inside and compared, so a file is never used for other ones.
    """
    if key is None or cache_dir is None:
        return zero_shot_classifier(model, labels, templates, truncate=truncate, batch_size=batch_size,
                                    progress=progress)
    labels, templates = list(labels), list(templates)
    path = classifier_path(cache_dir, key, labels, templates, truncate)
    found = read_classifier(path, labels, templates)
    if found is not None:
        return found
    classifier = zero_shot_classifier(model, labels, templates, truncate=truncate, batch_size=batch_size,
                                      progress=progress)
    write_classifier(path, classifier, templates)
    return classifier


def classifier_path(cache_dir: Path, key: dict, labels, templates, truncate: bool) -> Path:
    what = {"model": key, "labels": labels, "templates": templates, "truncate": truncate,
            "version": CLASSIFIER_CACHE_VERSION}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]
    return Path(cache_dir) / "classifiers" / f"{digest}.safetensors"


def write_classifier(path: Path, classifier: ZeroShotClassifier, templates) -> None:
    from safetensors.torch import save_file

    tensors = {"weights": classifier.weights.float().cpu().contiguous(),
               "logit_scale": classifier.logit_scale.float().cpu().reshape(1)}
    metadata = {"labels": json.dumps(classifier.labels), "templates": json.dumps(list(templates))}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    except OSError as e:  # a cache that cannot be written costs the next run time, not this run its result
        import sys

        print(f"miniclip: could not keep the classifier in {path.parent} ({e.strerror or e})", file=sys.stderr)


def read_classifier(path: Path, labels, templates) -> ZeroShotClassifier | None:
    """The cached classifier, or None if there is none, it is unreadable or it was built for other texts."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            if json.loads(meta["labels"]) != labels or json.loads(meta["templates"]) != templates:
                return None
            weights, scale = f.get_tensor("weights"), f.get_tensor("logit_scale")[0]
    except Exception:  # noqa: BLE001 - a damaged file only costs rebuilding it
        return None
    return ZeroShotClassifier(labels, weights, scale)
