"""Finding, reading and converting checkpoints (imported as `miniclip.weights`).

hub.py          where a checkpoint's files are (local path or Hugging Face Hub id)
files.py        reading tensors from .safetensors / .bin, safely
table.py        applying a layout's conversion table, reporting every mismatch by name
formats.py      which layout a checkpoint is in (one rule per layout); reading any kind of weights file
hf.py           the transformers layout: its config.json and its key table
openai.py       OpenAI's layout: its key table, sizes inferred from shapes
torchscript.py  the tensors of TorchScript archives (OpenAI's .pt files), read without loading their code
open_clip.py    open_clip's layout: OpenAI's key names, with open_clip_config.json
load.py         all of the above, to a ready model
convert.py      writing a model in the transformers or openai layout (`miniclip convert`)
"""

from .convert import convert, save
from .load import load

__all__ = ["load", "save", "convert"]
