"""Embedding and searching collections too large for one process or for memory.

    miniclip embed photos/ --out photos/            # sharded, resumable; also under torchrun
    miniclip index photos/ --faiss hnsw             # an approximate index beside the shards (miniclip[faiss])
    miniclip search --index photos/ "a dog" -k 10   # top-k over the shards: FAISS if built, else exact

One idea per module:
- sources.py: what to embed (a folder, a file list, WebDataset tar shards) as an ordered list of items
  grouped into output shards, and the Dataset that decodes them in DataLoader worker processes.
- layout.py: the folder on disk: one safetensors file per shard (embeddings + their sources), and
  manifest.json (model, dtype, preprocessing, the shards in row order).
- embed.py: the embedding loop: missing shards split among torchrun's ranks, written atomically.
- exact.py: exact top-k streamed over the shards in blocks, with a bounded working set.
- approximate.py: FAISS (HNSW) over the same rows, and its recall against exact search.

Nothing here is imported by the model core; the command line (miniclip/cli.py) parses and calls in.
"""
