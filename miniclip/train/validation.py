"""Validation during `miniclip train`: the evaluation package's metrics on held-out data, every --val-every
steps, on every rank (the same numbers), with the model in eval mode.

- --val PAIRS: retrieval recall@1/5 both ways (evaluate/retrieval.py); "recall@1" is the mean of the two R@1;
- --val-zeroshot DATA: zero-shot top-1/top-5/mean per class (evaluate/zeroshot.py), the classifier rebuilt from
  the model being trained at each validation.
"""

import torch


class Validation:
    """--val PAIRS: retrieval recall@1/5; --val-zeroshot DATA: zero-shot top-1/top-5 (the evaluation
    package's metrics). The best checkpoint is the one with the best `metric`: recall@1 when there are
    validation pairs, else zero-shot top-1."""

    def __init__(self, pairs=None, labelled=None, templates=None):
        self.pairs, self.labelled, self.templates = pairs, labelled, templates
        self.metric = "recall@1" if pairs is not None else "zeroshot_top1"

    @classmethod
    def read(cls, args) -> "Validation":
        pairs = labelled = templates = None
        if args.val is not None:
            from ..evaluate.datasets import read_pairs

            pairs = read_pairs(args.val)
        if args.val_zeroshot is not None:
            from ..evaluate.command import class_names, labelled_images, prompt_templates

            labelled = labelled_images(args.val_zeroshot, class_names(args.val_classes))
            templates = prompt_templates(args.val_templates or "imagenet")
        return cls(pairs, labelled, templates)

    def __bool__(self):
        return self.pairs is not None or self.labelled is not None

    @torch.no_grad()
    def run(self, model, preprocess, batch_size: int, device) -> dict:
        """Every rank computes it (the same numbers)."""
        was_training, scores = model.training, {}
        model.eval()
        if self.pairs is not None:
            scores.update(validate(model, preprocess, self.pairs, batch_size, device))
        if self.labelled is not None:
            from ..evaluate.zeroshot import zero_shot_results
            from ..zero_shot import zero_shot_classifier

            classifier = zero_shot_classifier(model, self.labelled.classnames, self.templates, truncate=True,
                                              batch_size=max(batch_size, 64))
            embeds = embed_images(model, preprocess, self.labelled.paths, batch_size, device)
            metrics = zero_shot_results(classifier, embeds, self.labelled.targets).metrics
            scores.update(zeroshot_top1=metrics["top1"], zeroshot_top5=metrics["top5"],
                          zeroshot_mean_per_class=metrics["mean_per_class"])
        model.train(was_training)
        return scores


def embed_images(model, preprocess, paths, batch_size: int, device) -> torch.Tensor:
    return torch.cat([model.encode_image(preprocess(paths[i:i + batch_size]).to(device)).float().cpu()
                      for i in range(0, len(paths), batch_size)])


@torch.no_grad()
def validate(model, preprocess, pairs, batch_size: int, device) -> dict:
    """Retrieval recall@1/5 on the validation pairs (miniclip/evaluate/retrieval.py); "recall@1" is the mean of
    the two directions' R@1."""
    from ..evaluate.retrieval import retrieval_recall

    was_training = model.training
    model.eval()
    images = embed_images(model, preprocess, pairs.images, batch_size, device)
    texts = torch.cat([model.encode_text(model.tokenize(pairs.captions[i:i + batch_size], truncate=True)
                                         .to(device)).float().cpu()
                       for i in range(0, len(pairs.captions), batch_size)])
    model.train(was_training)
    table = retrieval_recall(images, texts, pairs.caption_image, ks=(1, 5))
    table["recall@1"] = (table["image_to_text_R@1"] + table["text_to_image_R@1"]) / 2
    return table
