"""The `miniclip` command: CLIP's everyday jobs from the shell.

    miniclip classify IMAGE... --label TEXT...          labels with probabilities, best first
    miniclip embed INPUT... --out FILE [--text]          embeddings (+ their sources) into a .safetensors file
    miniclip search FOLDER QUERY [--image] [-k N]        a folder's images ranked against a text or an image
    miniclip similarity --image ... --text ... [--plot]  the cosine-similarity matrix, optionally as a PNG
    miniclip relevance IMAGE TEXT --out map.png          where in the image the text matches, as a heatmap
    miniclip convert SRC DST --to {transformers,openai}  a checkpoint rewritten in another layout

Every command takes --model (OpenAI name, Hub id or path), --device, --dtype and --batch-size. A user error
(missing file, unreadable image, unknown model, offline without a cache) prints one line and exits with 1.
"""

import argparse
import json
import sys
from pathlib import Path

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DTYPES = ("float32", "float16", "bfloat16")
EXIT_USER_ERROR = 1


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - only the errors a user can fix are reported; the rest re-raise
        if not is_user_error(e):
            raise
        message = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the message's layout
        print(f"miniclip: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def is_user_error(e: Exception) -> bool:
    from .errors import MiniclipError

    return isinstance(e, (MiniclipError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError))


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"OpenAI name (ViT-B/32, ...), Hub id or local path (default: {DEFAULT_MODEL})")
    common.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: cpu)")
    common.add_argument("--dtype", default="float32", choices=DTYPES)
    common.add_argument("--batch-size", type=positive_int, default=32)

    top = argparse.ArgumentParser(prog="miniclip", description="CLIP from the shell: classify, embed, search, compare, convert.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("classify", parents=[common], help="zero-shot classification of images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--label", nargs="+", required=True, metavar="TEXT", help="the candidate labels")
    p.add_argument("--template", nargs="+", default=None, metavar="TEMPLATE",
                   help='prompt templates with "{}" for the label (default: "a photo of a {}.")')
    p.set_defaults(run=classify)

    p = commands.add_parser("embed", parents=[common], help="embed images (files or folders) or texts")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--out", required=True, type=Path, help="the .safetensors file to write")
    p.add_argument("--text", action="store_true", help="the inputs are texts, not image paths")
    p.set_defaults(run=embed)

    p = commands.add_parser("search", parents=[common], help="rank a folder's images against a query")
    p.add_argument("folder", type=Path)
    p.add_argument("query", help="a text, or an image path with --image")
    p.add_argument("--image", action="store_true", help="the query is an image file")
    p.add_argument("-k", type=positive_int, default=5, help="how many results to print (default: 5)")
    p.set_defaults(run=search)

    p = commands.add_parser("similarity", parents=[common], help="cosine similarities of images and texts")
    p.add_argument("--image", nargs="+", required=True, metavar="IMAGE")
    p.add_argument("--text", nargs="+", required=True, metavar="TEXT")
    p.add_argument("--plot", type=Path, default=None, help="also write the matrix as a PNG heatmap")
    p.set_defaults(run=similarity)

    p = commands.add_parser("relevance", parents=[common], help="a heatmap of where an image matches a text")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--out", required=True, type=Path, help="the PNG to write")
    p.set_defaults(run=relevance)

    p = commands.add_parser("convert", help="rewrite a checkpoint in another layout")
    p.add_argument("src", help="OpenAI name, Hub id or path of the checkpoint")
    p.add_argument("dst", type=Path, help="the output folder (transformers) or file (openai)")
    p.add_argument("--to", required=True, choices=("transformers", "openai"))
    p.set_defaults(run=convert)
    return top


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# -----------------------------------------------------------------------------
# Shared steps


def load_model(args):
    import torch

    from .malloc import keep_freed_memory
    from .pretrained import load

    # The command owns its process, so it may tune malloc for it: freed activations are reused rather than
    # page-faulted back in on every batch (miniclip/malloc.py says why and how much).
    keep_freed_memory()
    return load(args.model, device=args.device, dtype=getattr(torch, args.dtype))


def image_files(inputs) -> list[Path]:
    """Image paths from files and folders (folders: every image file below them, sorted)."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(item).parts))
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"no such file or folder: {item}")
    return files


def progress(done: int, total: int, what: str) -> None:
    """A progress bar on stderr (stdout stays clean for results)."""
    width = 30
    filled = width * done // max(total, 1)
    end = "\n" if done >= total else ""
    print(f"\r{what} {done}/{total} [{'#' * filled}{'.' * (width - filled)}]", end=end, file=sys.stderr, flush=True)


def embed_images(model, preprocess, paths, batch_size: int, show_progress: bool = False):
    """(n, embed_dim) float32 image embeddings of image files, in batches."""
    import torch

    out = []
    for i in range(0, len(paths), batch_size):
        pixels = preprocess(list(paths[i:i + batch_size]))
        with torch.no_grad():
            out.append(model.encode_image(pixels.to(model.device, model.dtype)).float().cpu())
        if show_progress:
            progress(min(i + batch_size, len(paths)), len(paths), "embedding images")
    return torch.cat(out) if out else torch.empty(0, model.config.embed_dim)


def embed_texts(model, texts, batch_size: int, show_progress: bool = False):
    import torch

    out = []
    for i in range(0, len(texts), batch_size):
        ids = model.tokenize(texts[i:i + batch_size])
        with torch.no_grad():
            out.append(model.encode_text(ids).float().cpu())
        if show_progress:
            progress(min(i + batch_size, len(texts)), len(texts), "embedding texts")
    return torch.cat(out) if out else torch.empty(0, model.config.embed_dim)


def cosine(a, b):
    import torch.nn.functional as F

    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()


# -----------------------------------------------------------------------------
# Commands


def classify(args) -> None:
    from .zero_shot import DEFAULT_TEMPLATES, zero_shot_classifier

    paths = image_files(args.images)
    model, preprocess = load_model(args)
    classifier = zero_shot_classifier(model, args.label, args.template or DEFAULT_TEMPLATES)
    probs = classifier(embed_images(model, preprocess, paths, args.batch_size))
    for path, row in zip(paths, probs):
        print(path)
        for p, i in zip(*row.sort(descending=True)):
            print(f"  {p.item():.4f}  {args.label[i]}")


def embed(args) -> None:
    from safetensors.torch import save_file

    model, preprocess = load_model(args)
    if args.text:
        sources, embeds = list(args.inputs), embed_texts(model, list(args.inputs), args.batch_size, True)
    else:
        paths = image_files(args.inputs)
        sources, embeds = [str(p) for p in paths], embed_images(model, preprocess, paths, args.batch_size, True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"model": str(args.model), "kind": "text" if args.text else "image", "sources": json.dumps(sources)}
    save_file({"embeddings": embeds.contiguous()}, args.out, metadata=metadata)
    print(f"wrote {len(sources)} embeddings of size {embeds.shape[1]} to {args.out}", file=sys.stderr)


def search(args) -> None:
    from .search_index import update_index

    if not args.folder.is_dir():
        raise FileNotFoundError(f"no such folder: {args.folder}")
    files = image_files([args.folder])
    if not files:
        from .errors import ImageError

        raise ImageError(f"{args.folder} holds no image files (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    model, preprocess = load_model(args)
    paths, embeds, n_new = update_index(args.folder, files, str(args.model),
                                        lambda todo: embed_images(model, preprocess, todo, args.batch_size, True))
    print(f"{n_new} new or changed images embedded, {len(paths) - n_new} from the cache", file=sys.stderr)
    if args.image:
        query = embed_images(model, preprocess, image_files([args.query]), 1)
    else:
        query = embed_texts(model, [args.query], 1)
    scores = cosine(query, embeds)[0].tolist()
    for score, path in sorted(zip(scores, paths), key=lambda pair: -pair[0])[: args.k]:
        print(f"{score:.4f}  {path}")


def similarity(args) -> None:
    paths = image_files(args.image)
    model, preprocess = load_model(args)
    sims = cosine(embed_images(model, preprocess, paths, args.batch_size),
                  embed_texts(model, list(args.text), args.batch_size))
    names = [p.name for p in paths]
    width = max(len(n) for n in names)
    print(" " * width + "".join(f"  text {j + 1:<3}" for j in range(len(args.text))))
    for name, row in zip(names, sims):
        print(name.ljust(width) + "".join(f"  {v:9.4f}" for v in row.tolist()))
    for j, text in enumerate(args.text):
        print(f"text {j + 1}: {text}")
    if args.plot:
        from .plot import matrix_plot

        args.plot.parent.mkdir(parents=True, exist_ok=True)
        matrix_plot(sims, names, list(args.text)).save(args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)


def relevance(args) -> None:
    from .plot import heatmap_overlay
    from .image_processing import open_image
    from .relevance import relevance_map

    image = open_image(args.image)
    model, _ = load_model(args)
    values = relevance_map(model, image, args.text, batch_size=args.batch_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    heatmap_overlay(image, values).save(args.out)
    best = values.flatten().argmax().item()
    print(f"wrote {args.out}; the best match is around x={best % values.shape[1]}, y={best // values.shape[1]}",
          file=sys.stderr)


def convert(args) -> None:
    from .weights import convert as convert_checkpoint

    written = convert_checkpoint(args.src, args.dst, to=args.to)
    print(f"wrote {written}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
