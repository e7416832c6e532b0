"""Evaluation as the paper did it (Radford et al. 2021, section 3 and appendix A).

- protocol.py:     OpenAI's ImageNet class names, 80 prompt templates and the 7-template subset, as data
- datasets.py:     labelled images (ImageFolder or a label CSV) and image-caption pairs, read and checked
- zeroshot.py:     zero-shot top-1 / top-5 / per-class accuracy; the classifier cached on disk
- retrieval.py:    image <-> text recall@K with several captions per image
- linear_probe.py: L-BFGS logistic regression on frozen features, L2 strength chosen on a validation split
- command.py:      `miniclip eval zeroshot | retrieval | linear-probe`

docs/evaluation.md says how each number is computed and how to reproduce the published ones.
"""

from .datasets import LabelledImages, Pairs, image_folder, label_csv, read_pairs
from .linear_probe import LogisticRegression, ProbeResult, fit_logistic_regression, linear_probe
from .protocol import imagenet_classnames, imagenet_simple_templates, imagenet_templates
from .retrieval import recall_from_similarity, retrieval_recall
from .zeroshot import ZeroShotResult, cached_zero_shot_classifier, classification_metrics, zero_shot_results

__all__ = [
    "LabelledImages", "Pairs", "image_folder", "label_csv", "read_pairs",
    "LogisticRegression", "ProbeResult", "fit_logistic_regression", "linear_probe",
    "imagenet_classnames", "imagenet_simple_templates", "imagenet_templates",
    "recall_from_similarity", "retrieval_recall",
    "ZeroShotResult", "cached_zero_shot_classifier", "classification_metrics", "zero_shot_results",
]
