"""Helper processes for tests/test_embed_shards.py and tests/test_index.py (run as scripts).

    embed_worker.py slow ARGS...        `miniclip ARGS...` with every image batch slowed down by 0.3 s, so that a
                                        test can SIGKILL it between shards
    embed_worker.py embed-memory OUT N DIM SHARD BUDGET_MB   embed N images with a stand-in model that returns
                                        DIM-sized embeddings; prints peak RSS growth over the baseline (bytes)
    embed_worker.py search-memory FOLDER BUDGET_MB   exact search over a shard folder; prints peak RSS growth
"""

import sys
import time
from pathlib import Path


def reset_peak_rss() -> int:
    """Make the current RSS the process's peak (Linux: "5" into /proc/self/clear_refs resets VmHWM), so that
    the peak measured next is this window's, not import time's. Returns the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return peak_rss()


def peak_rss() -> int:
    """VmHWM, the peak resident set size since the last reset, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def slow(argv) -> int:
    from miniclip import cli
    from miniclip.model import CLIP

    encode = CLIP.encode_image

    def slowed(self, *args, **kwargs):
        time.sleep(0.3)
        return encode(self, *args, **kwargs)

    CLIP.encode_image = slowed
    return cli.main(argv)


class WideModel:
    """Stands in for CLIP in the embed loop: each image's embedding is DIM numbers from its pixels."""

    def __init__(self, dim):
        import torch

        self.dim, self.device, self.dtype = dim, torch.device("cpu"), torch.float32
        self.config = type("Config", (), {"embed_dim": dim})()

    def encode_image(self, pixels):
        return pixels.flatten(1)[:, :1].repeat(1, self.dim)


def embed_memory(out, n, dim, shard_size, budget_mb) -> None:
    import torch

    from miniclip.image_processing import Preprocessor
    from miniclip.index.embed import Settings, embed_to_folder

    images = sorted(Path(sys.argv[-1]).glob("*.png"))[:int(n)]
    preprocess = Preprocessor(size=8, crop_size=8)
    settings = Settings(shard_size=int(shard_size), batch_size=8, workers=0)
    # warm up (allocator, imports, the first shard write) on a throwaway folder, then measure
    embed_to_folder(WideModel(int(dim)), preprocess, images[:int(shard_size)], Path(out + "-warm"), {}, settings)
    torch.randn(1)
    base = reset_peak_rss()
    embed_to_folder(WideModel(int(dim)), preprocess, images, Path(out), {}, settings)
    print(peak_rss() - base)


def search_memory(folder, budget_mb) -> None:
    import torch

    from miniclip.index import exact
    from miniclip.index.layout import Collection

    collection = Collection(Path(folder))
    queries = torch.randn(3, collection.dim, generator=torch.Generator().manual_seed(1))
    budget = int(budget_mb) << 20
    first = next(collection.blocks(16))  # warm up: imports, the first mapping
    exact.top_k(queries, [first], 5)
    base = reset_peak_rss()
    exact.search_collection(collection, queries, 5, budget)
    print(peak_rss() - base)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "slow":
        sys.exit(slow(args))
    elif command == "embed-memory":
        embed_memory(*args[:5])
    elif command == "search-memory":
        search_memory(*args)
