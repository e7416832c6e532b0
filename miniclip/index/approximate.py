"""An approximate index over a shard folder, built with FAISS (pip install "miniclip[faiss]").

Exact search reads every row for every query; past a few million rows that is seconds per query. FAISS's
HNSW (a graph of the rows: each query walks from neighbour to closer neighbour) answers in about a
millisecond and reads a small fraction of the rows, at the price of sometimes missing a true neighbour.
How often is measured, not assumed: building the index also runs exact search for a sample of the stored
rows as queries and records the recall@10 (the fraction of the true 10 nearest found in the index's 10).

Parameters (HNSW_PARAMS below): M = 32 links per node, efConstruction = 40 (FAISS's default), efSearch = 256
(the size of the candidate list while searching; larger is slower and more exact). Measured on 100,000
independent random unit vectors (200 queries, December 2026, 2 shared CPU cores):

    dimensions   efSearch 64   128     256     (512)    build
    32           0.944         0.990   1.000            10 s   <- tests/test_index.py checks >= 0.95
    64           0.651         0.815   0.946            12 s
    512          0.144         0.243   0.393   0.598    200 s  (efConstruction 100)

Independent random vectors are the worst case for any graph or cluster index: in 512 dimensions every
cosine is 0 +- 0.04 and a "nearest" neighbour is barely nearer than any other row. Embeddings lie near a
low-dimensional set: 512-d vectors near a random 32-d subspace (tests/test_index.py) reach 1.000 at the
default parameters; `miniclip index` measures the recall on
the collection itself, and that figure, not this table, is the one to trust. The index holds the vectors
(rows x dim x 4 bytes) plus ~M x 8 bytes of links per row, all in memory: for collections past the RAM of
one machine, an IVF-PQ index (compressed vectors) is the next step, not done here.

Files: faiss.index (faiss.write_index) and faiss.json (the parameters, the recall, and which embedding it
indexes: search refuses an index older than the shards).
"""

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

INDEX = "faiss.index"
INFO = "faiss.json"
HNSW_PARAMS = {"M": 32, "efConstruction": 40, "efSearch": 256}
RECALL_QUERIES = 200
ADD_BLOCK = 65_536  # rows added to the index at a time


def faiss():
    from ..errors import require

    return require("faiss", "faiss", "an approximate index (miniclip index, search --index)")


def hnsw(dim: int, params: dict = HNSW_PARAMS):
    """An empty HNSW index on inner products (= cosine similarity of the unit vectors added)."""
    index = faiss().IndexHNSWFlat(dim, params["M"], faiss().METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params["efConstruction"]
    index.hnsw.efSearch = params["efSearch"]
    return index


def unit(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(F.normalize(x.float(), dim=-1).numpy())


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found's 10 & truth's 10| / 10."""
    return float(np.mean([len(set(f[:10]) & set(t[:10])) / 10 for f, t in zip(found, truth)]))


def build(collection, folder: Path, progress_bar=None, params: dict = HNSW_PARAMS) -> dict:
    """Index every row of a layout.Collection, measure recall@10 against exact search, write both files."""
    from ..embedding_cache import atomic_save
    from . import exact

    index = hnsw(collection.dim, params)
    sample = np.linspace(0, collection.rows - 1, min(RECALL_QUERIES, collection.rows)).astype(int)
    queries = torch.empty(len(sample), collection.dim)
    bar = progress_bar(collection.rows, "indexing rows") if progress_bar else None
    for first, block in collection.blocks(ADD_BLOCK):
        index.add(unit(block))
        inside = (sample >= first) & (sample < first + len(block))
        queries[np.flatnonzero(inside)] = block[sample[inside] - first]
        if bar is not None:
            bar.update(len(block))
    if bar is not None:
        bar.close()
    truth = exact.search_collection(collection, queries, 10, 256 << 20)[1].numpy()
    found = index.search(unit(queries), 10)[1]
    info = {"kind": "hnsw", "params": params, "rows": collection.rows, "plan": collection.manifest["plan"],
            "recall@10": recall_at_10(found, truth), "recall_queries": len(sample)}
    folder = Path(folder)
    atomic_save(folder / INDEX, lambda tmp: faiss().write_index(index, str(tmp)))
    atomic_save(folder / INFO, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=1)))
    return {"file": str(folder / INDEX), **info}


def exists(folder: Path) -> bool:
    return (Path(folder) / INDEX).exists() and (Path(folder) / INFO).exists()


def search(folder: Path, collection, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, rows), each (queries, k), best first, from the FAISS index in `folder`."""
    from ..errors import InputError

    info = json.loads((Path(folder) / INFO).read_text())
    if info["rows"] != collection.rows or info["plan"] != collection.manifest["plan"]:
        raise InputError(f"the FAISS index in {folder} was built for other embeddings: rebuild it with "
                         f"`miniclip index {folder}` (or search with --exact)")
    index = faiss().read_index(str(Path(folder) / INDEX))
    index.hnsw.efSearch = info["params"]["efSearch"]
    scores, rows = index.search(unit(queries), min(k, collection.rows))
    return torch.from_numpy(scores), torch.from_numpy(rows).long()
