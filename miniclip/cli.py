"""The `miniclip` command: CLIP's everyday jobs from the shell.

    miniclip classify IMAGE... --label TEXT...           labels with probabilities, best first
    miniclip embed INPUT... --out FILE [--text]           embeddings (+ their sources) into a .safetensors file
    miniclip search FOLDER QUERY [--image] [-k N]         a folder's images ranked against a text or an image
    miniclip embed SRC --out DIR / search --index DIR Q   sharded, resumable, torchrun-ready (miniclip/index/)
    miniclip index DIR                                    a FAISS index over such a folder (miniclip[faiss])
    miniclip similarity --image ... --text ... [--plot]   the cosine-similarity matrix, optionally plotted
    miniclip relevance IMAGE TEXT --out map.png           where in the image the text matches, as a heatmap
    miniclip convert SRC DST --to {transformers,openai}   a checkpoint rewritten in another layout
    miniclip export SRC DST --to onnx                     the two towers as ONNX graphs
    miniclip eval {zeroshot,retrieval,linear-probe} ...   the paper's evaluations (miniclip/evaluate/)
    miniclip train --model M --data DATA --out DIR        fine-tuning, also under torchrun (miniclip/train/)

The promises: a repeated option adds to the earlier ones; texts and files are checked before any image is
embedded; image embeddings are cached per model (see embedding_cache.py), saved as they are made, so Ctrl-C
or an unreadable file loses nothing; a user error is one line on stderr and exit status 1 (--debug shows
the traceback). Only the parser is built before the command runs, so --help and --version never import
torch.
"""

import argparse
import json
import sys
from pathlib import Path

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DTYPES = ("float32", "float16", "bfloat16")
EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print("miniclip: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - only the errors a user can fix are reported; the rest re-raise
        if args.debug or not is_user_error(e):
            raise
        message = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the message's layout
        message = message.replace("Pass truncate=True", "Pass --truncate")  # the library's words for the API
        print(f"miniclip: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


def is_user_error(e: Exception) -> bool:
    from .errors import MiniclipError

    return isinstance(e, (MiniclipError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError))


# -----------------------------------------------------------------------------
# The command line


class Help(argparse.HelpFormatter):
    """--help shows each option's default, where it has one worth showing and its help does not say it."""

    def _get_help_string(self, action):
        shown = action.default not in (None, False, [], argparse.SUPPRESS) and action.option_strings
        return action.help + " (default: %(default)s)" if shown and "default" not in action.help else action.help


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="miniclip", formatter_class=Help,
                                  description="CLIP from the shell: classify, embed, search, compare, convert.")
    top.add_argument("--version", action="version", version=f"miniclip {version()}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", help="show the traceback of an error")
    model = argparse.ArgumentParser(add_help=False, parents=[debug])
    model.add_argument("--model", default=DEFAULT_MODEL, help="OpenAI or open_clip name (ViT-B/32, ViT-B-32), "
                       "Hub id, or local folder or file")
    model.add_argument("--device", default="cpu", help="where to run: cpu, cuda, cuda:1, mps, ...")
    model.add_argument("--dtype", default="float32", choices=DTYPES, help="the precision of the weights")
    model.add_argument("--batch-size", type=positive_int, default=32, help="images or texts per forward pass")
    images = argparse.ArgumentParser(add_help=False)
    images.add_argument("--skip-errors", action="store_true", help="go on past unreadable image files, list "
                        "them at the end and exit with status 1 (default: stop at the first, its path named)")
    images.add_argument("--cache-dir", type=Path, default=None, help="where image embeddings are kept between "
                        "runs (default: $XDG_CACHE_HOME/miniclip or ~/.cache/miniclip)")
    images.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    texts = argparse.ArgumentParser(add_help=False)
    texts.add_argument("--truncate", action="store_true", help="cut texts longer than the model's context "
                       "(default: refuse them, naming the text)")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print one JSON object per line instead of text")

    def command(name, parents, run, help):
        p = commands.add_parser(name, parents=parents, help=help, description=help[0].upper() + help[1:] + ".",
                                formatter_class=Help)
        p.set_defaults(run=run)
        return p

    p = command("classify", [model, images, texts, output], classify, "zero-shot classification of images")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.add_argument("--label", nargs="+", action="extend", default=[], metavar="TEXT",
                   help="candidate labels (each --label adds to the earlier ones)")
    p.add_argument("--labels-file", action="append", default=[], metavar="FILE",
                   help="more labels, one per line ('-': standard input)")
    p.add_argument("--template", nargs="+", action="extend", default=None, metavar="TEMPLATE",
                   help='prompt templates with one "{}" for the label (default: "a photo of a {}.")')
    p.add_argument("-k", "--top-k", type=positive_int, default=None, help="print only the k best labels "
                   "(default: all)")

    p = command("embed", [model, images, texts], embed, "embed images (files or folders) or texts")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders (texts with --text)")
    p.add_argument("--out", required=True, type=Path, help="the .safetensors file to write, or a folder (a path "
                   "without a suffix): sharded and resumable, also under torchrun (docs/embedding.md)")
    p.add_argument("--text", action="store_true", help="the inputs are texts, not image paths")
    p.add_argument("--texts-file", action="append", default=[], metavar="FILE",
                   help="texts to embed, one per line ('-': standard input); implies --text")
    p.add_argument("--shard-size", type=positive_int, default=None, help="with --out FOLDER: images per shard "
                   "(the unit a rerun resumes at; default 10000)")
    p.add_argument("--shard-dtype", choices=("float32", "float16"), default=None,
                   help="with --out FOLDER: how embeddings are stored (default float32)")
    p.add_argument("--workers", type=non_negative_int, default=None, help="with --out FOLDER: processes decoding images "
                   "(0: none, decode in the main process; default: up to 4, at most the cores per process)")

    p = command("search", [model, images, texts, output], search, "rank a folder's images against a query")
    p.add_argument("folder", type=Path, nargs="?", help="the folder to search (or --index)")
    p.add_argument("query", help="a text, or an image file with --image")
    p.add_argument("--image", action="store_true", help="the query is an image file")
    p.add_argument("-k", "--top-k", type=positive_int, default=5, help="how many results to print")
    p.add_argument("--index", type=Path, default=None, metavar="FOLDER", help="search a folder written by "
                   "`embed --out FOLDER` instead (its FAISS index if built, else exactly)")
    p.add_argument("--exact", action="store_true", help="with --index: exact search even if a FAISS index exists")
    p.add_argument("--memory", type=positive_int, default=256, metavar="MB", help="with --index: the memory "
                   "exact search may hold at once")

    p = command("index", [debug], build_index, "build a FAISS index over a folder written by `embed --out FOLDER`")
    p.add_argument("folder", type=Path)
    p.add_argument("--faiss", choices=("hnsw",), default="hnsw", help="the index type (needs miniclip[faiss])")

    p = command("similarity", [model, images, texts, output], similarity, "cosine similarities of images and texts")
    p.add_argument("--image", nargs="+", action="extend", default=[], metavar="IMAGE", help="image files or folders")
    p.add_argument("--text", nargs="+", action="extend", default=[], metavar="TEXT")
    p.add_argument("--texts-file", action="append", default=[], metavar="FILE",
                   help="more texts, one per line ('-': standard input)")
    p.add_argument("--plot", type=Path, default=None, help="also draw the matrix into this file (.png, .svg, "
                   ".pdf, ...; needs miniclip[plot])")

    p = command("relevance", [model, texts], relevance, "a heatmap of where an image matches a text")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--out", required=True, type=Path, help="the picture to write (.png, .jpg, .svg, ...; "
                   "needs miniclip[plot])")

    p = command("export", [debug], export, "write the image and text towers as ONNX graphs")
    p.add_argument("src", help="OpenAI name, Hub id or path of the checkpoint")
    p.add_argument("dst", type=Path, help="the output folder (image_encoder.onnx, text_encoder.onnx)")
    p.add_argument("--to", required=True, choices=("onnx",))
    p.add_argument("--opset", type=positive_int, default=18, help="the ONNX opset to write")

    p = command("convert", [debug], convert, "rewrite a checkpoint in another layout")
    p.add_argument("src", help="OpenAI name, Hub id or path of the checkpoint")
    p.add_argument("dst", type=Path, help="the output folder (transformers) or file (openai)")
    p.add_argument("--to", required=True, choices=("transformers", "openai"))

    p = command("train", [debug], train, "train or fine-tune a model on image-caption pairs (docs/training.md)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="the starting checkpoint: OpenAI or open_clip name, "
                   "Hub id, or local folder or file")
    p.add_argument("--batch-size", type=positive_int, default=32, help="pairs per step on each process")
    add_train_arguments(p)

    # `miniclip eval KIND ...`: the paper's evaluations, run by miniclip/evaluate/command.py
    p = commands.add_parser("eval", help="zero-shot accuracy, retrieval recall or a linear probe, as the paper "
                            "measured them", description="Evaluate as the paper did (docs/evaluation.md).")
    kinds = p.add_subparsers(dest="evaluation", required=True, metavar="KIND")
    common = [model, images, output]
    p = kinds.add_parser("zeroshot", parents=common + [texts], formatter_class=Help,
                         help="zero-shot top-1/top-5/per-class accuracy on labelled images")
    p.add_argument("data", type=Path, metavar="DIR", help="an image folder (DIR/<class>/<image>), or a label CSV "
                   "(header image,label; needs --classes)")
    p.add_argument("--classes", default=None, metavar="imagenet|FILE", help="class names: OpenAI's 1,000 ImageNet "
                   "names, or a file with one a line (default: the folder names)")
    p.add_argument("--templates", default="imagenet", metavar="imagenet|simple|FILE", help="prompt templates: "
                   "the paper's 80, the notebook's 7, or a file with one a line ('{}' for the class) (default: "
                   "imagenet)")
    p.add_argument("--per-class", action="store_true", help="also print each class's accuracy")
    p = kinds.add_parser("retrieval", parents=common + [texts], formatter_class=Help,
                         help="image->text and text->image recall@1/5/10")
    p.add_argument("pairs", type=Path, metavar="PAIRS", help=".csv (header image,caption) or .jsonl "
                   "({\"image\": ..., \"caption\": ...}); paths relative to the file; one row per caption")
    p = kinds.add_parser("linear-probe", parents=common, formatter_class=Help,
                         help="logistic regression on frozen image features (L2 strength chosen on validation)")
    p.add_argument("train", type=Path, metavar="TRAIN_DIR", help="an image folder, one folder per class")
    p.add_argument("test", type=Path, metavar="TEST_DIR", help="an image folder with the same class folders")
    for p in kinds.choices.values():
        p.set_defaults(run=evaluate)
    return top


def add_train_arguments(p) -> None:
    """`miniclip train`'s options (here, not in miniclip/train/, whose import would load torch for --help)."""
    p.add_argument("--data", required=True, metavar="DATA", help="training pairs: a .csv (header image,caption), "
                   "a .jsonl, a folder of images with same-named .txt captions, or WebDataset shards "
                   "('data/{000..009}.tar')")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="the run's folder: log.jsonl, "
                   "checkpoint/, best/, final/")
    p.add_argument("--val", type=Path, default=None, metavar="PAIRS", help="validation pairs (.csv or .jsonl), "
                   "retrieval recall@1 every --val-every steps; the best model is kept in DIR/best")
    p.add_argument("--val-zeroshot", type=Path, default=None, metavar="DATA", help="labelled images (an image "
                   "folder, one sub-folder per class, or a label CSV with --val-classes): zero-shot top-1/top-5 "
                   "every --val-every steps; without --val, the best model is the best top-1")
    p.add_argument("--val-classes", default=None, metavar="imagenet|FILE", help="--val-zeroshot's class names "
                   "(default: the folder names)")
    p.add_argument("--val-templates", default=None, metavar="imagenet|simple|FILE", help="--val-zeroshot's "
                   "prompt templates, as miniclip eval zeroshot's --templates (default: imagenet, the paper's 80)")
    p.add_argument("--val-every", type=positive_int, default=500, metavar="N", help="steps between validations")
    p.add_argument("--steps", type=positive_int, default=None, help="optimizer steps in all")
    p.add_argument("--epochs", type=positive_int, default=None, help="passes over the data (instead of --steps)")
    p.add_argument("--lr", type=float, default=1e-5, help="the peak learning rate")
    p.add_argument("--warmup", type=non_negative_int, default=100, metavar="STEPS", help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=0.2, help="AdamW's, on weights only")
    p.add_argument("--seed", type=int, default=0, help="the seed of the data order and of --augment's crops")
    p.add_argument("--resume", type=Path, default=None, metavar="DIR", help="continue the run in DIR "
                   "(DIR/checkpoint) from where it stopped; give the same options as before")
    p.add_argument("--save-every", type=positive_int, default=1000, metavar="N", help="steps between checkpoints")
    p.add_argument("--log-every", type=positive_int, default=10, metavar="N", help="steps between lines of log.jsonl")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="autocast precision "
                   "(weights and optimizer state stay fp32)")
    p.add_argument("--micro-batches", type=positive_int, default=1, metavar="K", help="accumulate over K parts of each "
                   "batch (as equal as can be; at most one a row), keeping every negative")
    p.add_argument("--local-loss", action="store_true", help="several processes: each computes its rows of "
                   "the logits only")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute each block's activations in "
                   "backward (less memory, a third more compute)")
    p.add_argument("--lock-image", type=non_negative_int, default=None, metavar="N", help="freeze the image tower but its "
                   "last N blocks and head (0: all of it, LiT)")
    p.add_argument("--lock-text", type=non_negative_int, default=None, metavar="N", help="freeze the text tower but its "
                   "last N blocks and head")
    p.add_argument("--workers", type=non_negative_int, default=2, help="DataLoader processes decoding images (0: none)")
    p.add_argument("--augment", action="store_true", help="random resized crops (--crop-scale) instead of the "
                   "evaluation transform's centre crop")
    p.add_argument("--crop-scale", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="with --augment: the fraction of the image's area a crop covers (default 0.9 1.0)")
    p.add_argument("--streams", type=positive_int, default=None, metavar="S", help="WebDataset shards: read as S "
                   "streams, each a share of every batch (default processes x workers; the batches depend on S, "
                   "not on the number of processes)")
    p.add_argument("--shuffle-buffer", type=non_negative_int, default=None, metavar="N", help="WebDataset shards: "
                   "samples each stream shuffles among (default 1000; 0: the shards' order)")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars to DIR/tensorboard "
                   "(pip install \"miniclip[tensorboard]\")")
    p.add_argument("--device", default=None, help="default: this rank's GPU under torchrun, else the first "
                   "GPU, else the CPU")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("miniclip")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


# -----------------------------------------------------------------------------
# Inputs: checked before the model is loaded, so a mistake costs nothing


def image_files(inputs) -> list[Path]:
    """Image paths from files and folders (folders: every image file below them, sorted; hidden ones skipped)."""
    from .errors import ImageNotFoundError

    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(item).parts))
        elif item.is_file():
            files.append(item)
        else:
            raise ImageNotFoundError(f"no such file or folder: {item}")
    if not files:
        raise ImageNotFoundError(f"no image files in {', '.join(map(str, inputs))} (looked for "
                                 f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def read_texts(given, files, what: str) -> list[str]:
    """Texts from the command line, then from each file (one per line, blank lines skipped; '-' is stdin)."""
    from .errors import InputError

    texts = list(given)
    for name in files:
        try:
            lines = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{name} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        except FileNotFoundError:
            raise FileNotFoundError(f"no such {what} file: {name}") from None
        texts += [line.strip() for line in lines.splitlines() if line.strip()]
    return texts


def check_labels(labels: list[str]) -> None:
    """Zero-shot classification chooses among labels: one label always wins, and a duplicate splits its share."""
    from .errors import InputError

    if len(labels) < 2:
        raise InputError(f"classify needs at least two labels to choose from (got {len(labels)}); "
                         "for one text's score use `miniclip similarity --image ... --text ...`")
    seen = set()
    for label in labels:
        if label in seen:
            raise InputError(f"the label {label!r} is given twice: its probability would be split between the copies")
        seen.add(label)


def check_device(name: str) -> None:
    """A device that torch knows and this machine has, else one line saying which part is missing."""
    import torch

    from .errors import InputError

    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r} is not a device name torch knows (e.g. cpu, cuda, cuda:1, mps)") from None
    if device.type == "cpu":
        return
    module = getattr(torch, device.type, None) if device.type != "mps" else torch.backends.mps
    if module is None or not hasattr(module, "is_available") or not module.is_available():
        raise InputError(f"--device {name}: this machine has no {device.type} device that torch "
                         f"{torch.__version__} can use")
    count = module.device_count() if hasattr(module, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise InputError(f"--device {name}: there are {count} {device.type} devices (0..{count - 1})")


def check_texts(model, texts: list[str], truncate: bool) -> None:
    """Tokenize now, so a text that is too long stops the run before any image is read."""
    model.tokenize(texts, truncate=truncate)


def check_query(args) -> None:
    """`search photos photos/cat.jpg` without --image would search for the text "photos/cat.jpg"."""
    from .errors import InputError

    query = Path(args.query)
    if not args.image and (query.suffix.lower() in IMAGE_SUFFIXES or query.is_file()):
        raise InputError(f"the query {args.query!r} names a file: add --image to search with that image")


# -----------------------------------------------------------------------------
# Shared steps


def load_model(args):
    """(model, preprocess, checkpoint files) for --model on --device in --dtype."""
    import torch

    from .malloc import keep_freed_memory
    from .pretrained import load
    from .weights.hub import resolve

    check_device(args.device)
    # The command owns its process, so it may tune malloc for it: freed activations are reused rather than
    # page-faulted back in on every batch (miniclip/malloc.py says why and how much).
    keep_freed_memory()
    model, preprocess = load(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    return model, preprocess, resolve(args.model)


def open_cache(args, model, preprocess, checkpoint_files):
    from .embedding_cache import EmbeddingCache, default_cache_dir, model_key

    if args.no_cache:
        return None
    return EmbeddingCache(args.cache_dir or default_cache_dir(), model_key(checkpoint_files, model, preprocess)).open()


def progress_bar(total: int, what: str, initial: int = 0):
    """tqdm on stderr (stdout stays clean for results), shown only once a command has run for a second."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=what, unit=what.split()[-1].rstrip("s"), delay=1.0,
                file=sys.stderr, dynamic_ncols=True)


def embed_images(model, preprocess, paths, args, cache=None):
    """(embeddings (n, d) float32, the paths embedded): every readable image, from the cache where it has it.

    Unreadable files stop the run (naming the file) or, with --skip-errors, are left out and listed on
    `args.unreadable`. New embeddings are saved to the cache as they are made, and on the way out whatever
    stopped the run (done, error, Ctrl-C).
    """
    import torch

    found = {}
    if cache is not None:
        for i, path in enumerate(paths):
            if (embedding := cache.get(path)) is not None:
                found[i] = embedding
    todo = [i for i in range(len(paths)) if i not in found]
    bar = progress_bar(len(paths), "embedding images", initial=len(found))
    try:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start:start + args.batch_size]
            pixels, batch = read_batch(preprocess, paths, batch, args)
            if batch:
                with torch.no_grad():
                    embeds = model.encode_image(pixels.to(model.device, model.dtype)).float().cpu()
                for i, embedding in zip(batch, embeds):
                    found[i] = embedding
                    if cache is not None:
                        cache.put(paths[i], embedding)
            if cache is not None:
                cache.save_if_due()
            bar.update(min(args.batch_size, len(todo) - start))
    except BaseException:  # an unreadable file, Ctrl-C, anything: keep what was made
        bar.close()
        if cache is not None and (saved := cache.save()):
            print(f"miniclip: {saved} new embeddings were saved in the cache; a rerun starts after them",
                  file=sys.stderr)
        raise
    bar.close()
    if cache is not None:
        cache.compact()
        print(f"{len(todo)} new or changed images embedded, {len(paths) - len(todo)} from the cache", file=sys.stderr)
    kept = sorted(found)
    embeds = torch.stack([found[i] for i in kept]) if kept else torch.empty(0, model.config.embed_dim)
    return embeds, [paths[i] for i in kept]


def read_batch(preprocess, paths, batch, args):
    """Pixels of the images `batch` (indices into paths), and the indices that could be read."""
    from .errors import ImageError

    try:
        return preprocess([paths[i] for i in batch]), batch
    except (ImageError, OSError):
        pass  # find which files: one at a time
    rows, kept = [], []
    for i in batch:
        try:
            rows.append(preprocess(paths[i]))
            kept.append(i)
        except (ImageError, OSError) as e:
            if not args.skip_errors:
                raise
            args.unreadable.append(f"{paths[i]} ({' '.join(str(e).split())})")
    import torch

    return (torch.stack(rows) if rows else None), kept


def report_unreadable(args) -> int:
    """List the files --skip-errors left out; the exit status says whether every file was read."""
    for line in args.unreadable:
        print(f"miniclip: skipped {line}", file=sys.stderr)
    if args.unreadable:
        print(f"miniclip: {len(args.unreadable)} unreadable image files were skipped", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def embed_texts(model, texts, args):
    import torch

    out = []
    bar = progress_bar(len(texts), "embedding texts")
    with bar:
        for i in range(0, len(texts), args.batch_size):
            ids = model.tokenize(texts[i:i + args.batch_size], truncate=args.truncate)
            with torch.no_grad():
                out.append(model.encode_text(ids).float().cpu())
            bar.update(len(ids))
    return torch.cat(out) if out else torch.empty(0, model.config.embed_dim)


def cosine(a, b):
    import torch.nn.functional as F

    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()


def print_json(obj) -> None:
    print(json.dumps(obj, ensure_ascii=False))


# -----------------------------------------------------------------------------
# Commands


def classify(args) -> int:
    from .zero_shot import DEFAULT_TEMPLATES, zero_shot_classifier

    paths = image_files(args.images)
    labels = read_texts(args.label, args.labels_file, "labels")
    check_labels(labels)
    model, preprocess, files = load_model(args)
    classifier = zero_shot_classifier(model, labels, args.template or DEFAULT_TEMPLATES, truncate=args.truncate)
    args.unreadable = []
    embeds, paths = embed_images(model, preprocess, paths, args, open_cache(args, model, preprocess, files))
    k = min(args.top_k or len(labels), len(labels))
    for path, row in zip(paths, classifier(embeds)):
        probs, best = row.topk(k)
        ranked = [(labels[i], p) for p, i in zip(probs.tolist(), best.tolist())]
        if args.json:
            print_json({"image": str(path), "labels": [{"label": lb, "probability": p} for lb, p in ranked]})
        else:
            print(path)
            for label, p in ranked:
                print(f"  {p:.4f}  {label}")
    return report_unreadable(args)


def embed(args) -> int:
    from .embedding_cache import atomic_save
    from .errors import InputError

    text_mode = args.text or bool(args.texts_file)
    if text_mode:
        sources = read_texts(args.inputs, args.texts_file, "texts")
        if not sources:
            raise InputError("no texts to embed: give them as arguments or with --texts-file")
    else:
        if not args.inputs:
            raise InputError("no images to embed: give image files or folders (or --text with texts)")
    sharded_only = [flag for flag, value in (("--shard-size", args.shard_size), ("--shard-dtype", args.shard_dtype),
                                             ("--workers", args.workers)) if value is not None]
    if sharded_only and not is_shard_folder(args.out):
        raise InputError(f"{', '.join(sharded_only)} apply to sharded output (--out FOLDER), not to the single file "
                         f"{args.out}")
    if is_shard_folder(args.out):
        if text_mode:
            raise InputError(f"--out {args.out} is a folder (sharded output), which is for images; write texts to "
                             "a .safetensors file")
        return embed_sharded(args)
    if not text_mode:
        paths = image_files(args.inputs)
    model, preprocess, files = load_model(args)
    args.unreadable = []
    if text_mode:
        check_texts(model, sources, args.truncate)
        embeds = embed_texts(model, sources, args)
    else:
        embeds, paths = embed_images(model, preprocess, paths, args, open_cache(args, model, preprocess, files))
        sources = [str(p) for p in paths]
    from safetensors.torch import save_file

    args.out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"model": str(args.model), "kind": "text" if text_mode else "image", "sources": json.dumps(sources)}
    atomic_save(args.out, lambda tmp: save_file({"embeddings": embeds.contiguous()}, tmp, metadata=metadata))
    print(f"wrote {len(sources)} embeddings of size {embeds.shape[1]} to {args.out}", file=sys.stderr)
    return report_unreadable(args)


def is_shard_folder(out: Path) -> bool:
    """`--out photos/` or `--out photos` (no suffix): the sharded layout; `--out photos.safetensors`: one file."""
    return out.is_dir() or not out.suffix


def embed_sharded(args) -> int:
    """`embed --out FOLDER`: miniclip/index/embed.py does the work (also under torchrun)."""
    from .embedding_cache import model_key
    from .errors import InputError
    from .index import embed as sharded
    from .index.sources import expand_tars, is_tar_pattern, read_file_list

    tars = [item for item in args.inputs if is_tar_pattern(item)]
    if tars and len(tars) < len(args.inputs):
        raise InputError("give either WebDataset tar shards or image files and folders, not both")
    paths = expand_tars(tars) if tars else []  # else image files and folders; a .txt input lists image paths
    for item in [] if tars else args.inputs:
        paths += read_file_list(item) if Path(item).suffix == ".txt" and Path(item).is_file() else image_files([item])
    sharded.join()
    args.device = sharded.device_for_rank(args.device)
    model, preprocess, files = load_model(args)
    key = {k: v for k, v in model_key(files, model, preprocess).items() if k != "device"}
    workers = sharded.default_workers() if args.workers is None else args.workers
    settings = sharded.Settings(shard_size=args.shard_size or 10_000, batch_size=args.batch_size, workers=workers,
                                shard_dtype=args.shard_dtype or "float32", skip_errors=args.skip_errors)
    summary = sharded.embed_to_folder(model, preprocess, paths, args.out, key, settings,
                                      progress_bar if sharded.rank() == 0 else None, tars=bool(tars))
    sharded.report(summary, args.out)
    args.unreadable = summary["skipped"] if sharded.rank() == 0 else []
    return report_unreadable(args)


def search(args) -> int:
    from .errors import ImageNotFoundError, InputError

    if args.index is not None:
        if args.folder is not None:
            raise InputError(f"give a folder to search or --index, not both (got {args.folder} and {args.index})")
        return search_index(args)
    if args.folder is None:
        raise InputError("search needs a folder of images (or --index FOLDER from `miniclip embed --out FOLDER`)")
    if not args.folder.is_dir():
        raise ImageNotFoundError(f"no such folder: {args.folder}")
    check_query(args)
    files = image_files([args.folder])
    query_files = image_files([args.query]) if args.image else None
    model, preprocess, checkpoint = load_model(args)
    if not args.image:
        check_texts(model, [args.query], args.truncate)
    args.unreadable = []
    embeds, files = embed_images(model, preprocess, files, args, open_cache(args, model, preprocess, checkpoint))
    query = embed_query(model, preprocess, query_files, args)
    from .index.exact import top_k

    scores, rows = top_k(query, [(0, embeds)], args.top_k)  # the folder's embeddings are one block
    print_ranked(args, [(s, str(files[r])) for s, r in zip(scores[0].tolist(), rows[0].tolist())])
    return report_unreadable(args)


def embed_query(model, preprocess, query_files, args):
    """(1, d): the embedding of the query image (which must be readable) or text."""
    if args.image:
        args.skip_errors = False
        return embed_images(model, preprocess, query_files, args)[0][:1]
    return embed_texts(model, [args.query], args)


def print_ranked(args, ranked) -> None:
    """[(score, path), ...] best first, as text or one JSON object."""
    if args.json:
        print_json({"query": args.query, "results": [{"path": p, "score": s} for s, p in ranked]})
    else:
        for score, path in ranked:
            print(f"{score:.4f}  {path}")


def search_index(args) -> int:
    """`search --index FOLDER`: its FAISS index if one was built (and not --exact), else exact streamed search."""
    from .errors import InputError
    from .index import approximate, exact
    from .index.layout import Collection

    check_query(args)
    collection = Collection(args.index)
    query_files = image_files([args.query]) if args.image else None
    model, preprocess, _ = load_model(args)
    if model.config.embed_dim != collection.dim:
        raise InputError(f"--index {args.index} holds embeddings of size {collection.dim}, made with "
                         f"{collection.manifest['model']['weights'][0]}; --model {args.model} makes size "
                         f"{model.config.embed_dim}: pass the model the index was made with")
    if not args.image:
        check_texts(model, [args.query], args.truncate)
    args.unreadable = []
    query = embed_query(model, preprocess, query_files, args)
    if approximate.exists(args.index) and not args.exact:
        scores, rows = approximate.search(args.index, collection, query, args.top_k)
    else:
        scores, rows = exact.search_collection(collection, query, args.top_k, args.memory << 20)
    # FAISS marks "no more results" with row -1 (HNSW may find fewer than k); exact search never does
    print_ranked(args, [(s, collection.source(r)) for s, r in zip(scores[0].tolist(), rows[0].tolist()) if r >= 0])
    return 0


def build_index(args) -> None:
    """`index FOLDER`: a FAISS index beside the shards; prints its recall@10 against exact search."""
    from .index import approximate
    from .index.layout import Collection

    collection = Collection(args.folder)
    info = approximate.build(collection, args.folder, progress_bar)
    print(f"wrote {info['file']} ({info['kind']}, {info['params']}) over {collection.rows} rows; recall@10 against "
          f"exact search on {info['recall_queries']} stored rows as queries: {info['recall@10']:.3f}", file=sys.stderr)


def similarity(args) -> int:
    from .errors import InputError

    if not args.image:
        raise InputError("similarity needs images: --image FILE_OR_FOLDER ...")
    paths = image_files(args.image)
    texts = read_texts(args.text, args.texts_file, "texts")
    if not texts:
        raise InputError("similarity needs texts: --text TEXT ... or --texts-file FILE")
    if args.plot:
        from .plot import check_plot_path

        check_plot_path(args.plot)
    model, preprocess, files = load_model(args)
    check_texts(model, texts, args.truncate)
    args.unreadable = []
    image_embeds, paths = embed_images(model, preprocess, paths, args, open_cache(args, model, preprocess, files))
    sims = cosine(image_embeds, embed_texts(model, texts, args))
    if args.json:
        for path, row in zip(paths, sims.tolist()):
            print_json({"image": str(path), "similarities": [{"text": t, "cosine": v} for t, v in zip(texts, row)]})
    else:
        print_matrix(sims, [str(p) for p in paths], texts)
    if args.plot:
        from .plot import save_similarity_plot

        args.plot.parent.mkdir(parents=True, exist_ok=True)
        save_similarity_plot(sims, [p.name for p in paths], texts, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return report_unreadable(args)


def print_matrix(sims, names: list[str], texts: list[str]) -> None:
    width = max(len(n) for n in names)
    print(" " * width + "".join(f"  text {j + 1:<3}" for j in range(len(texts))))
    for name, row in zip(names, sims.tolist()):
        print(name.ljust(width) + "".join(f"  {v:9.4f}" for v in row))
    for j, text in enumerate(texts):
        print(f"text {j + 1}: {text}")


def relevance(args) -> None:
    from .image_processing import open_image
    from .plot import check_plot_path, save_heatmap_overlay
    from .relevance import relevance_map

    check_plot_path(args.out)
    image = open_image(args.image)
    model, _, _ = load_model(args)
    check_texts(model, [args.text], args.truncate)
    values = relevance_map(model, image, args.text, batch_size=args.batch_size, progress=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_heatmap_overlay(image, values, args.out)
    best = values.flatten().argmax().item()
    sx, sy = image.width / values.shape[1], image.height / values.shape[0]  # the map may be smaller than the image
    print(f"wrote {args.out}; the best match is around x={int((best % values.shape[1] + 0.5) * sx)}, "
          f"y={int((best // values.shape[1] + 0.5) * sy)}", file=sys.stderr)


def export(args) -> None:
    from .export import check_onnx, export_onnx
    from .model import CLIP

    model = CLIP.from_pretrained(args.src)  # the plain model: exporting traces its arithmetic as written
    written = export_onnx(model, args.dst, opset=args.opset)
    print(f"wrote {', '.join(map(str, written))} (opset {args.opset}, any batch size)", file=sys.stderr)
    try:
        diffs = check_onnx(model, args.dst)
    except ImportError:  # onnxruntime is not installed: nothing to check with
        return
    print("onnxruntime vs PyTorch, max |difference|: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()),
          file=sys.stderr)


def convert(args) -> None:
    from .weights import convert as convert_checkpoint

    written = convert_checkpoint(args.src, args.dst, to=args.to)
    print(f"wrote {written}", file=sys.stderr)


def train(args) -> int:
    """`miniclip train ...`: miniclip/train/command.py does the work."""
    from .train.command import run

    return run(args)


def evaluate(args) -> int:
    """`miniclip eval ...`: miniclip/evaluate/command.py does the work."""
    from .evaluate.command import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
