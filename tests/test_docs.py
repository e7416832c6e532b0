"""The docs' runnable examples are true: each runs as written, on the tiny test checkpoint."""

import re
import subprocess
import sys
from pathlib import Path

import torch
from test_cli import make_image

from miniclip import CLIP

DOCS = Path(__file__).parent.parent / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def test_the_fine_tuning_loop_runs_and_writes_a_checkpoint_that_loads(tiny_dir, tmp_path):
    [script] = [b for b in python_blocks(DOCS / "training.md") if "train_step" in b]
    (tmp_path / "finetune.py").write_text(script)
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for i, caption in enumerate(["a red square", "a blue circle", "a green triangle", "a red circle",
                                 "a blue square", "a green circle"]):
        make_image(pairs / f"{i}.jpg", (40 + 4 * i, 36), seed=i)
        (pairs / f"{i}.txt").write_text(caption + "\n")
    done = subprocess.run([sys.executable, "finetune.py", str(tiny_dir), str(pairs), str(tmp_path / "run")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [line for line in done.stdout.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in steps] == [f"step {i}" for i in range(1, 11)], done.stdout
    tuned, original = CLIP.from_pretrained(tmp_path / "run"), CLIP.from_pretrained(tiny_dir)
    changed = {n for n, p in tuned.state_dict().items() if not torch.equal(p, original.state_dict()[n])}
    # lock(model.visual, unlocked_blocks=2): the image tower's first blocks stay as they were; the text tower trains
    assert any(n.startswith("text.") for n in changed), changed
    n_blocks = len(original.visual.blocks)
    frozen = [n for n in changed if n.startswith("visual.") and not any(
        n.startswith(f"visual.blocks.{i}.") for i in range(n_blocks - 2, n_blocks))
        and n.split(".")[1] in ("blocks", "patch_embed", "class_embedding", "position_embedding", "ln_pre")]
    assert not frozen, frozen
