"""The ImageNet zero-shot protocol as OpenAI published it, shipped as data (miniclip/data/imagenet_zeroshot.json).

Source: OpenAI's notebook `Prompt_Engineering_for_ImageNet.ipynb` (github.com/openai/CLIP, notebooks/), the
same lists open_clip ships in `zero_shot_metadata.py`:
- `classnames`: 1,000 names in ImageNet's class-index order, rewritten by hand to read well in a prompt
  ("tench", "goldfish", ..., "toilet paper"). Kept exactly as published, including its two repeats:
  "missile" (classes 657 and 744) and "sunglasses" (836 and 837). A changed list is the most common reason
  for a reproduction a few points off the paper, so it is never "fixed" here.
- `templates`: the 80 prompt templates of the paper's ensemble ("a bad photo of a {}.", ...).
- `simple_templates`: the 7 the notebook selected by a greedy search ("itap of a {}.", ...).
"""

import json
from functools import cache
from pathlib import Path

PROTOCOL_FILE = Path(__file__).resolve().parent.parent / "data" / "imagenet_zeroshot.json"


@cache
def imagenet_protocol() -> dict:
    """{"source": str, "classnames": [1000 str], "templates": [80 str], "simple_templates": [7 str]}."""
    return json.loads(PROTOCOL_FILE.read_text(encoding="utf-8"))


def imagenet_classnames() -> list[str]:
    return list(imagenet_protocol()["classnames"])


def imagenet_templates() -> list[str]:
    """The 80 templates of the paper's ensemble."""
    return list(imagenet_protocol()["templates"])


def imagenet_simple_templates() -> list[str]:
    """The notebook's 7-template subset."""
    return list(imagenet_protocol()["simple_templates"])
