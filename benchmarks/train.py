"""One training step (forward, loss, backward, AdamW) against transformers' CLIPModel(return_loss=True) on the
same weights and batch, in one run; and the peak memory of a step with gradient checkpointing and without.

    python -m benchmarks.train [--repeats 3] [--batch 32]

ViT-B/32-sized random weights (benchmarks/model.py's checkpoint), a batch of realistic captions (8-18 tokens,
tokenized to OpenAI's 77 positions) and random pixels, fp32 on the CPU. Both sides use torch's AdamW with
OpenAI's settings. miniclip is `miniclip.train.Trainer` on the plain `CLIP.from_pretrained` model: its step
cuts the captions after the batch's last end-of-text token (same gradients, tests/test_train.py), so it is
timed against transformers fed the 77 positions, as a training loop hands it a tokenized batch, and against
transformers fed the same cut ids, which isolates the model's own arithmetic.

Memory is measured in fresh processes (the kernel's peak resident set, VmHWM): the peak of forward + backward
above the model and optimizer at rest (what checkpointing changes), and the peak of the whole process.
On a machine with a CUDA GPU, bf16 step times against transformers under the same autocast are added.
"""

import argparse
import ctypes
import json
import os
import subprocess
import sys

import torch

from benchmarks.model import caption_ids, checkpoint, print_table, row, side_by_side

HERE = os.path.dirname(os.path.abspath(__file__))
OPENAI_ADAMW = {"lr": 5e-4, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.2}  # ViT-B/32 (paper, table 20)
EOT = 49407


def ours(path, device="cpu", precision="fp32", checkpointed=False):
    """miniclip's Trainer on the plain model (no warm-up: the step runs at the peak rate, as theirs does)."""
    from miniclip import CLIP
    from miniclip.train import TrainConfig, Trainer, towers

    model = CLIP.from_pretrained(path, device=device)
    if checkpointed:
        towers.checkpoint_blocks(model)
    return Trainer(model, TrainConfig(warmup_steps=0, precision=precision, **OPENAI_ADAMW))


def theirs(path, device="cpu", precision="fp32"):
    """transformers' CLIPModel in train mode with the same AdamW; returns step(pixels, ids) -> loss."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(path).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), **OPENAI_ADAMW)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]

    def step(pixels, ids):
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            loss = model(input_ids=ids, pixel_values=pixels, return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def inputs(batch: int, device="cpu"):
    """(pixels, ids at 77 positions, the position after the batch's last end-of-text token)."""
    pixels = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    ids = caption_ids(batch).to(device)
    return pixels, ids, int((ids == EOT).int().argmax(-1).max()) + 1


def step_rows(path, repeats: int, batch: int) -> list[dict]:
    pixels, ids, longest = inputs(batch)
    trainer, step = ours(path), theirs(path)
    a, b = side_by_side(lambda: trainer.train_step(pixels, ids), lambda: step(pixels, ids), repeats)
    cut = ids[:, :longest]
    a2, b2 = side_by_side(lambda: trainer.train_step(pixels, ids), lambda: step(pixels, cut), repeats)
    return [row(f"training step, batch {batch}, vs transformers fed 77 tokens (s)", a, b, lower_is_better=True,
                note=f"fp32; longest caption {longest} tokens"),
            row(f"training step, batch {batch}, vs transformers fed the cut ids (s)", a2, b2, lower_is_better=True,
                note="fp32; the model's own arithmetic")]


# -----------------------------------------------------------------------------
# Peak memory, each configuration in a fresh process

# glibc's malloc serves allocations under its mmap threshold from its heap, which it keeps when they are freed;
# by default the threshold rises to the size of the largest block freed (up to 32 MB), so after a warm-up
# step every activation comes from the heap and the resident set counts, at its peak, freed activations that
# the allocator held on to as well as the live ones. A fixed threshold sends each tensor over 128 kB to its
# own mapping, returned when freed, and the resident set follows the tensors (measured on ViT-B/32, batch 32:
# forward + backward 1427 MB and 692 MB above rest, plain and checkpointed, against 1426 and 691 MB of live
# tensor storage counted op by op; with the default threshold 1671 MB and 1268 MB).
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak():
    """VmHWM := VmRSS (Linux: /proc/<pid>/clear_refs, "5")."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def memory_child(side: str, batch: int) -> dict:
    """One warm-up step (AdamW's state allocated), then the measured step: the peak of its forward + backward
    above the resident set at rest, and the process's peak after its optimizer step."""
    path = checkpoint()
    pixels, ids, _ = inputs(batch)
    if side == "transformers":  # one call: only the whole step is measured
        step = theirs(path)
        step(pixels, ids)
        backward, update = (lambda: None), (lambda: step(pixels, ids))
    else:
        trainer = ours(path, checkpointed=side == "checkpointed")
        trainer.train_step(pixels, ids)
        backward, update = (lambda: trainer.backward(pixels, ids)), trainer.update
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand back what the warm-up step freed
    rest = status_mb("VmRSS")
    reset_peak()
    backward()
    backward_peak = status_mb("VmHWM")
    update()
    return {"rest_mb": rest, "backward_peak_mb": backward_peak - rest, "step_peak_mb": status_mb("VmHWM")}


def memory(side: str, batch: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.train", "--memory-child", side, "--batch", str(batch)],
                         cwd=os.path.dirname(HERE), capture_output=True, text=True, check=True,
                         env={**os.environ, "TRANSFORMERS_VERBOSITY": "error", **FIXED_MMAP_THRESHOLD})
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_rows(batch: int) -> list[dict]:
    plain, checkpointed, reference = memory("plain", batch), memory("checkpointed", batch), memory("transformers", batch)
    fraction = checkpointed["backward_peak_mb"] / plain["backward_peak_mb"]
    return [
        row(f"forward + backward, batch {batch}, above the resting state (MB)", checkpointed["backward_peak_mb"],
            plain["backward_peak_mb"], lower_is_better=True,
            note=f"checkpointed vs not: {fraction:.2f}x; at rest {plain['rest_mb']:.0f} MB (weights, AdamW moments)"),
        row(f"training step, batch {batch}, peak resident set (MB)", checkpointed["step_peak_mb"],
            plain["step_peak_mb"], lower_is_better=True,
            note=f"checkpointed vs not: {checkpointed['step_peak_mb'] / plain['step_peak_mb']:.2f}x"),
        row(f"training step, batch {batch}, peak resident set vs transformers (MB)", plain["step_peak_mb"],
            reference["step_peak_mb"], lower_is_better=True, note="neither checkpointed"),
    ]


# -----------------------------------------------------------------------------
# GPU, when there is one


def synchronized(fn):
    def run():
        fn()
        torch.cuda.synchronize()
    return run


def gpu_rows(path, repeats: int, batch: int) -> list[dict]:
    pixels, ids, longest = inputs(batch, "cuda")
    trainer, step = ours(path, "cuda", "bf16"), theirs(path, "cuda", "bf16")
    a, b = side_by_side(synchronized(lambda: trainer.train_step(pixels, ids)), synchronized(lambda: step(pixels, ids)),
                        repeats)
    cut = ids[:, :longest]
    a2, b2 = side_by_side(synchronized(lambda: trainer.train_step(pixels, ids)),
                          synchronized(lambda: step(pixels, cut)), repeats)
    note = f"bf16 autocast on {torch.cuda.get_device_name()}"
    return [row(f"GPU training step, batch {batch}, vs transformers fed 77 tokens (s)", a, b, lower_is_better=True,
                note=note),
            row(f"GPU training step, batch {batch}, vs transformers fed the cut ids (s)", a2, b2, lower_is_better=True,
                note=note)]


def run(repeats: int = 3, batch: int = 32) -> list[dict]:
    path = checkpoint()
    rows = step_rows(path, repeats, batch) + memory_rows(batch)
    if torch.cuda.is_available():
        rows += gpu_rows(path, repeats, 256)
    return rows


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--repeats", type=int, default=3)
    cli.add_argument("--batch", type=int, default=32)
    cli.add_argument("--memory-child", choices=["plain", "checkpointed", "transformers"],
                     help="one peak-memory measurement in this process; prints it as JSON")
    args = cli.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.batch)))
    else:
        print_table(run(args.repeats, args.batch), "miniclip training vs transformers (ratio > 1: miniclip is better)")
