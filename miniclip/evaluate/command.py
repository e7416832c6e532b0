"""`miniclip eval zeroshot | retrieval | linear-probe`: the paper's three evaluations from the shell.

The options are declared in miniclip/cli.py with the other commands; this module runs them. Each reads
and checks its data before loading the model, reuses the command line's image embedding (the embedding
cache, --skip-errors, progress bars), prints a table (or with --json one object whose keys are the metric
names, values fractions in [0, 1]) and the throughput on stderr.
"""

import sys
import time
from pathlib import Path

from .. import cli
from ..errors import InputError


def run(args) -> int:
    return {"zeroshot": zeroshot, "retrieval": retrieval, "linear-probe": linear_probe}[args.evaluation](args)


# -----------------------------------------------------------------------------
# Inputs


def class_names(choice: str | None) -> list[str] | None:
    """--classes: None (the folder names), "imagenet" (OpenAI's 1,000) or a file with one name a line."""
    from .protocol import imagenet_classnames

    if choice is None:
        return None
    if choice == "imagenet":
        return imagenet_classnames()
    names = cli.read_texts([], [choice], "class names")
    if not names:
        raise InputError(f"--classes {choice}: the file has no class names (one a line)")
    return names


def prompt_templates(choice: str) -> list[str]:
    """--templates: "imagenet" (the 80), "simple" (the notebook's 7) or a file with one template a line."""
    from ..zero_shot import check_template
    from .protocol import imagenet_simple_templates, imagenet_templates

    if choice == "imagenet":
        return imagenet_templates()
    if choice == "simple":
        return imagenet_simple_templates()
    templates = cli.read_texts([], [choice], "templates")
    if not templates:
        raise InputError(f"--templates {choice}: the file has no templates (one a line, with '{{}}' for the class)")
    for i, t in enumerate(templates):
        check_template(t, i)
    return templates


def labelled_images(data: Path, classes: list[str] | None):
    from .datasets import image_folder, label_csv

    if data.suffix.lower() == ".csv" and data.is_file():
        if classes is None:
            raise InputError(f"{data} is a label CSV: give the class names its labels refer to with --classes "
                             "imagenet or --classes FILE")
        return label_csv(data, classes)
    return image_folder(data, classes)


def embed_labelled(model, preprocess, dataset, args, cache):
    """(embeddings, class indices, seconds) of the readable images of a LabelledImages."""
    target_of = {path: t for path, t in zip(dataset.paths, dataset.targets)}
    start = time.perf_counter()
    embeds, paths = cli.embed_images(model, preprocess, dataset.paths, args, cache)
    return embeds, [target_of[p] for p in paths], time.perf_counter() - start


def throughput(n: int, seconds: float, what: str = "images") -> float:
    rate = n / seconds if seconds > 0 else float("inf")
    print(f"{n} {what} in {seconds:.1f} s ({rate:.1f} {what}/s)", file=sys.stderr)
    return rate


# -----------------------------------------------------------------------------
# Commands


def zeroshot(args) -> int:
    from ..embedding_cache import default_cache_dir, model_key
    from .zeroshot import cached_zero_shot_classifier, zero_shot_results

    classes = class_names(args.classes)
    templates = prompt_templates(args.templates)
    dataset = labelled_images(args.data, classes)
    model, preprocess, files = cli.load_model(args)
    args.unreadable = []
    start = time.perf_counter()
    key = None if args.no_cache else model_key(files, model, preprocess)
    classifier = cached_zero_shot_classifier(model, dataset.classnames, templates, key,
                                             args.cache_dir or default_cache_dir(), truncate=args.truncate,
                                             batch_size=args.batch_size, progress=True)
    print(f"classifier: {len(dataset.classnames)} classes x {len(templates)} templates in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    cache = cli.open_cache(args, model, preprocess, files)
    embeds, targets, seconds = embed_labelled(model, preprocess, dataset, args, cache)
    metrics = zero_shot_results(classifier, embeds, targets).metrics
    metrics["images_per_second"] = throughput(len(targets), seconds)
    if args.json:
        cli.print_json(metrics)
    else:
        print(f"zero-shot: {metrics['classes']} classes x {len(templates)} templates, {metrics['images']} images")
        print_metrics(metrics, ("top1", "top5", "mean_per_class"))
        if args.per_class:
            for row in metrics["per_class"]:
                acc = "     -" if row["top1"] is None else f"{100 * row['top1']:6.2f}"
                print(f"  {acc}%  {row['images']:6d}  {row['index']:4d}  {row['class']}")
    return cli.report_unreadable(args)


def retrieval(args) -> int:
    from .datasets import read_pairs
    from .retrieval import retrieval_recall

    pairs = read_pairs(args.pairs)
    model, preprocess, files = cli.load_model(args)
    cli.check_texts(model, pairs.captions, args.truncate)
    args.unreadable = []
    start = time.perf_counter()
    image_embeds, paths = cli.embed_images(model, preprocess, pairs.images, args,
                                           cli.open_cache(args, model, preprocess, files))
    seconds = time.perf_counter() - start
    if args.unreadable:  # an image left out takes its captions with it
        kept = {p: i for i, p in enumerate(paths)}
        rows = [j for j, i in enumerate(pairs.caption_image) if pairs.images[i] in kept]
        pairs.captions = [pairs.captions[j] for j in rows]
        pairs.caption_image = [kept[pairs.images[pairs.caption_image[j]]] for j in rows]
    start_texts = time.perf_counter()
    text_embeds = cli.embed_texts(model, pairs.captions, args)
    text_seconds = time.perf_counter() - start_texts
    metrics = retrieval_recall(image_embeds, text_embeds, pairs.caption_image)
    metrics["images_per_second"] = throughput(len(paths), seconds)
    metrics["captions_per_second"] = throughput(len(pairs.captions), text_seconds, "captions")
    if args.json:
        cli.print_json(metrics)
    else:
        print(f"retrieval: {metrics['images']} images, {metrics['captions']} captions")
        print_metrics(metrics, [k for k in metrics if "_R@" in k])
    return cli.report_unreadable(args)


def linear_probe(args) -> int:
    import torch

    from .datasets import image_folder
    from .linear_probe import VALIDATION_FRACTION
    from .linear_probe import linear_probe as fit_probe

    train = image_folder(args.train)
    test_folders = sorted(p.name for p in Path(args.test).iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if Path(args.test).is_dir() else []
    unknown = [name for name in test_folders if name not in train.classnames]
    if unknown:
        raise InputError(f"{Path(args.test) / unknown[0]}: the test set's class folders must be among the "
                         f"training set's ({len(train.classnames)} in {args.train})")
    test = image_folder(args.test, train.classnames)
    model, preprocess, files = cli.load_model(args)
    args.unreadable = []
    cache = cli.open_cache(args, model, preprocess, files)
    train_x, train_y, s1 = embed_labelled(model, preprocess, train, args, cache)
    test_x, test_y, s2 = embed_labelled(model, preprocess, test, args, cache)
    rate = throughput(len(train_y) + len(test_y), s1 + s2)
    start = time.perf_counter()
    result = fit_probe(train_x, torch.tensor(train_y), test_x, torch.tensor(test_y), len(train.classnames))
    print(f"{len(result.validation)} L2 strengths tried, then refit, in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
    metrics = {"accuracy": result.accuracy, "lambda": result.lam, "train_images": len(train_y),
               "test_images": len(test_y), "classes": len(train.classnames), "images_per_second": rate}
    if args.json:
        cli.print_json(metrics)
    else:
        print(f"linear probe: {metrics['classes']} classes, {len(train_y)} training and {len(test_y)} test images")
        print_metrics(metrics, ("accuracy",))
        n_val = max(1, round(VALIDATION_FRACTION * len(train_y)))
        print(f"  L2 strength {result.lam:.3g}, chosen on a {n_val}-image validation split of the training set")
    return cli.report_unreadable(args)


def print_metrics(metrics: dict, names) -> None:
    width = max(len(n) for n in names)
    for name in names:
        print(f"  {name.ljust(width)}  {100 * metrics[name]:6.2f}%")
