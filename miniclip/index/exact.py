"""Exact top-k by cosine similarity, streamed: any number of rows, a bounded working set.

The rows arrive in blocks (layout.Collection.blocks, or one in-memory tensor); each block is normalised,
scored against the queries, and its best k merged with the best k so far. Merging top-k lists is exact:
the k best of all rows are among the k best of the first rows and the k best of the rest. So the result
equals a top-k over the full score matrix, while memory holds one block, its scores and 2k candidates.
"""

import torch
import torch.nn.functional as F

FLOAT32 = 4  # bytes


def block_rows_for(budget_bytes: int, dim: int, n_queries: int) -> int:
    """How many rows a block may have so that it fits the budget: the block as mapped (up to fp32), its
    float32 copy, and the (queries, rows) score matrix with the rows' norms. They get 3/4 of the budget; the
    rest is for the candidates kept, the queries, and what the allocator and the page cache hold on to."""
    per_row = FLOAT32 * (2 * dim + n_queries + 1)
    return max(1, budget_bytes * 3 // 4 // per_row)


def top_k(queries: torch.Tensor, blocks, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, rows), each (queries, k'), best first, k' = min(k, rows seen): the cosine similarities of
    each query with its k most similar rows, and those rows' indices.

    queries: (q, d) embeddings, any scale; blocks: (first row, (n, d) tensor) pairs in any order."""
    queries = F.normalize(queries.float(), dim=-1)
    best_scores = torch.empty(len(queries), 0)
    best_rows = torch.empty(len(queries), 0, dtype=torch.long)
    for first, block in blocks:
        # cosine = (query . row) / |row|: dividing the scores, not the rows, saves a normalised copy of the block
        scores = (queries @ block.float().t()) / block.float().norm(dim=1).clamp_min(1e-12)  # (q, n)
        rows = torch.arange(first, first + len(block)).expand(len(queries), -1)
        scores = torch.cat([best_scores, scores], dim=1)
        rows = torch.cat([best_rows, rows], dim=1)
        best_scores, picked = scores.topk(min(k, scores.shape[1]), dim=1)  # sorted, best first
        best_rows = rows.gather(1, picked)
    return best_scores, best_rows


def search_collection(collection, queries: torch.Tensor, k: int, budget_bytes: int):
    """top_k over a layout.Collection, reading blocks that fit `budget_bytes`."""
    block = block_rows_for(budget_bytes, collection.dim, len(queries))
    return top_k(queries, collection.blocks(block), k)
