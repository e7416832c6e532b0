"""Finding, reading and converting checkpoints (imported as `miniclip.weights`).

hub.py    where a checkpoint's files are (local path or Hugging Face Hub id)
files.py  reading tensors from .safetensors / .bin, safely
table.py  applying a layout's conversion table, reporting every mismatch by name
hf.py     the transformers layout: its config.json and its key table
load.py   all of the above, to a ready model
"""

from .load import load

__all__ = ["load"]
