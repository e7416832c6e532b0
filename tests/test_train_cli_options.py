"""`miniclip train`'s options for large models and batches, through the command: each reaches the library and
changes what it should (the library itself is tested in test_train.py and test_train_distributed.py).

- --lock-image 0 / --lock-text 1: the frozen tensors of out/final are the starting checkpoint's, bit for bit; the
  rest moved, logit_scale (in neither tower) included;
- --grad-checkpointing: every block runs twice per step (forward, then again in backward), and the losses and
  final weights equal a plain run's bit for bit;
- --micro-batches 2: each half of the batch is embedded twice; the first loss and the first step's update equal
  a plain run's within float32 rounding; a batch of 7 (an unreadable image lost) is cut into parts of 4 and 3;
- --local-loss: on one process the same step as without; under torchrun, each rank's loss is its own rows' and
  the logged loss their mean, equal to one process's on the same global batch;
- each run's start record in log.jsonl holds the option as given.

The toy data and helpers are test_train_cli.py's. About 25 s on 2 CPU cores, 9-12 s of it the torchrun launch.
When torchrun runs this file as a script (the last test), it runs the command with the loss function watched.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import miniclip
from miniclip import CLIP
from miniclip.cli import main
from test_train_cli import losses, read_log, toy_pairs, train, write_csv

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py's: a tiny model, one thread

LR = 1e-4  # test_train_cli.train's --lr; with --warmup 1 every step is taken at this rate
# How far a one-step update may differ from the plain run's, in units of LR: see `assert_same_first_step`.
UPDATE_TOLERANCE = 0.05
# The first step's loss, relative: the same batch embedded in other groupings (halves, one rank's rows) rounds
# differently in float32 (eps 1.2e-7); measured <= 2.2e-7 (four micro-batches), 7.5e-8 (--local-loss).
LOSS_TOLERANCE = 1e-6


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return CLIP.from_pretrained(folder).state_dict()


def options(out: Path) -> dict:
    """The command's options, as the run's start record in log.jsonl keeps them."""
    start = read_log(out)[0]
    assert start["event"] == "start"
    return start["options"]


@pytest.fixture(scope="module")
def plain(tiny_dir, tmp_path_factory):
    """The toy data (24 pairs) and a plain one-step run on a batch of 8: (data, run folder)."""
    folder = tmp_path_factory.mktemp("plain")
    data = write_csv(folder / "data", toy_pairs())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train(tiny_dir, data, folder / "run", "--steps", 1, "--batch-size", 8) == 0
    finally:
        torch.set_num_threads(threads)
    return data, folder / "run"


def assert_same_first_step(ours: dict, plain: dict) -> None:
    """The weights after one step with the same batch and mathematically the same gradient, in float32.

    AdamW's first update is u = LR * g / (|g| + eps) (bias-corrected m = g, v = g^2; eps 1e-6), about LR * sign(g):
    a gradient that is really different (another batch, negatives lost) moves many elements by up to 2 * LR.
    Rounding differences in g (other summation orders) matter only where |g| is near eps: du/dg =
    LR * eps / (|g| + eps)^2, and a noise of 1e-9 in g moves u by up to 1e-3 * LR. Measured worst, outside the
    key biases: 0.0004 LR (two micro-batches), 0.0005 (parts of 4 and 3), 0.010 (--local-loss), 0.008 (two
    ranks); 0.004 and 0.013 with four and eight micro-batches. Plus at most one float32 ulp of w + u
    (logit_scale, 4.6: 4.8e-7 = 0.005 LR). Bound: 0.05 LR, 40 times less than a sign that differs.

    Left out: the attention's key biases (qkv.bias[width:2 * width]). Their gradient is 0 in exact arithmetic
    (q . b_k is added to a whole row of logits, which the softmax ignores), so what it is in float32 is rounding
    noise, which AdamW scales up to anything within +-LR (measured up to 0.17 LR apart).
    """
    assert ours.keys() == plain.keys()
    for name in plain:
        diff = (ours[name] - plain[name]).abs()
        if name.endswith("attn.qkv.bias"):
            width = len(diff) // 3
            diff[width:2 * width] = 0
        assert diff.max() <= UPDATE_TOLERANCE * LR, (name, diff.max().item() / LR)


def test_lock_image_0_freezes_the_image_tower_and_trains_the_rest(tiny_dir, plain, tmp_path):
    """--lock-image 0 (LiT): after two steps every image-tower tensor of out/final equals the starting
    checkpoint's; every text-tower tensor moved, and so did logit_scale: lock() freezes a tower's own
    parameters, and logit_scale belongs to neither tower (it starts at the clamp, ln 100, and this batch's
    gradient pulls it down)."""
    data, _ = plain
    assert train(tiny_dir, data, tmp_path / "run", "--steps", 2, "--batch-size", 8, "--lock-image", 0) == 0
    assert options(tmp_path / "run")["lock_image"] == 0 and options(tmp_path / "run")["lock_text"] is None
    start, final = weights(tiny_dir), weights(tmp_path / "run" / "final")
    frozen = [k for k in start if k.startswith("visual.")]
    trained = [k for k in start if k.startswith("text.")] + ["logit_scale"]
    assert sorted(frozen + trained) == sorted(start) and len(frozen) == 32
    assert [k for k in frozen if not torch.equal(start[k], final[k])] == []
    assert [k for k in trained if torch.equal(start[k], final[k])] == []
    assert final["logit_scale"] < start["logit_scale"] == pytest.approx(math.log(100))


def test_lock_text_1_trains_the_last_text_block_and_head_only(tiny_dir, plain, tmp_path):
    """--lock-text 1 on a 2-block text tower: its embeddings (token and position) and first block are the
    starting checkpoint's after two steps; its last block and head (ln_final, proj: what towers.HEADS lists
    for the text transformer) moved, and so did the whole image tower and logit_scale."""
    data, _ = plain
    assert train(tiny_dir, data, tmp_path / "run", "--steps", 2, "--batch-size", 8, "--lock-text", 1) == 0
    assert options(tmp_path / "run")["lock_text"] == 1 and options(tmp_path / "run")["lock_image"] is None
    start, final = weights(tiny_dir), weights(tmp_path / "run" / "final")
    frozen = ["text.token_embedding.weight", "text.position_embedding"] + \
        [k for k in start if k.startswith("text.blocks.0.")]
    trained = [k for k in start if k.startswith(("text.blocks.1.", "text.ln_final.", "text.proj.", "visual."))]
    trained.append("logit_scale")
    assert sorted(frozen + trained) == sorted(start)
    assert {"text.ln_final.weight", "text.ln_final.bias", "text.proj.weight"} <= set(trained)
    assert [k for k in frozen if not torch.equal(start[k], final[k])] == []
    assert [k for k in trained if torch.equal(start[k], final[k])] == []


def test_grad_checkpointing_recomputes_blocks_and_changes_no_number(tiny_dir, plain, tmp_path, monkeypatch):
    """--grad-checkpointing: each transformer block's MLP runs twice per step instead of once (the block is
    run again in backward), and the two steps' losses and the final weights equal a plain run's bit for bit.

    Bitwise on the CPU: the recomputation runs the same kernels on the same inputs (one thread, no dropout, no
    randomness), so it reproduces every saved activation exactly, and backward then runs the same operations
    on the same numbers as without checkpointing."""
    from miniclip.model import MLP

    data, _ = plain
    calls, forward = [0], MLP.forward

    def counted(self, x):
        calls[0] += 1
        return forward(self, x)

    monkeypatch.setattr(MLP, "forward", counted)
    runs = {}
    for name, extra in (("plain", []), ("checkpointed", ["--grad-checkpointing"])):
        calls[0] = 0
        assert train(tiny_dir, data, tmp_path / name, "--steps", 2, "--batch-size", 8, *extra) == 0
        runs[name] = calls[0]
    assert runs == {"plain": 2 * 4, "checkpointed": 2 * 2 * 4}  # steps x (runs per step) x blocks (2 per tower)
    assert [options(tmp_path / name)["grad_checkpointing"] for name in runs] == [False, True]
    assert losses(tmp_path / "checkpointed") == losses(tmp_path / "plain")
    a, b = weights(tmp_path / "plain" / "final"), weights(tmp_path / "checkpointed" / "final")
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []


def test_micro_batches_keep_the_whole_batch_step(tiny_dir, plain, tmp_path, monkeypatch):
    """--micro-batches 2 on a batch of 8: the trainer embeds 4 pairs at a time, each half twice (without, then
    with autograd), and the first step's loss and update equal the plain run's (one batch of 8, every negative
    kept) within float32 rounding (LOSS_TOLERANCE, assert_same_first_step)."""
    from miniclip.train import Trainer

    data, plain_run = plain
    sizes, embed = [], Trainer.embed

    def watched(self, pixel_values, input_ids):
        sizes.append(len(pixel_values))
        return embed(self, pixel_values, input_ids)

    monkeypatch.setattr(Trainer, "embed", watched)
    assert train(tiny_dir, data, tmp_path / "run", "--steps", 1, "--batch-size", 8, "--micro-batches", 2) == 0
    assert sizes == [4, 4, 4, 4] and options(tmp_path / "run")["micro_batches"] == 2
    ours, theirs = losses(tmp_path / "run")[1], losses(plain_run)[1]
    assert abs(ours - theirs) <= LOSS_TOLERANCE * abs(theirs), (ours, theirs)
    start, plain_final = weights(tiny_dir), weights(plain_run / "final")
    assert max((plain_final[k] - start[k]).abs().max() for k in start) > 0.9 * LR  # steps of about LR
    assert_same_first_step(weights(tmp_path / "run" / "final"), plain_final)


def test_micro_batches_that_do_not_divide_the_batch_are_near_equal_parts(tiny_dir, tmp_path, monkeypatch):
    """--micro-batches 2 on a batch that lost an unreadable image (7 rows; as --batch-size 7 would give): the
    parts are 4 and 3 rows, the image is counted as skipped, and the first step's loss and update equal a plain
    run's on the same data within float32 rounding."""
    from miniclip.train import Trainer

    data = write_csv(tmp_path / "data", toy_pairs(variants=1)[:7])
    (tmp_path / "data" / "broken.png").write_bytes(b"this is not a png")
    with open(data, "a") as f:
        f.write("broken.png,a broken picture\n")
    sizes, embed = [], Trainer.embed

    def watched(self, pixel_values, input_ids):
        sizes.append(len(pixel_values))
        return embed(self, pixel_values, input_ids)

    monkeypatch.setattr(Trainer, "embed", watched)
    for name, extra in (("plain", []), ("parts", ["--micro-batches", 2])):
        sizes.clear()
        assert train(tiny_dir, data, tmp_path / name, "--steps", 1, "--batch-size", 8, *extra) == 0
        assert read_log(tmp_path / name)[-1]["skipped_images"] == 1
    assert sizes == [4, 3, 4, 3]
    ours, theirs = losses(tmp_path / "parts")[1], losses(tmp_path / "plain")[1]
    assert abs(ours - theirs) <= LOSS_TOLERANCE * abs(theirs), (ours, theirs)
    assert_same_first_step(weights(tmp_path / "parts" / "final"), weights(tmp_path / "plain" / "final"))


def test_local_loss_on_one_process_is_the_full_loss(tiny_dir, plain, tmp_path, monkeypatch):
    """--local-loss on one process: the loss is computed in local mode (each rank's rows; one rank holds all
    of them), and the first loss and update equal the plain run's within float32 rounding (the text-to-image
    logits are a second matrix product instead of a transpose, so not bit for bit)."""
    from miniclip.train import trainer

    data, plain_run = plain
    modes, clip_loss = [], trainer.clip_loss

    def watched(image, text, logit_scale, local_loss=False):
        modes.append(local_loss)
        return clip_loss(image, text, logit_scale, local_loss)

    monkeypatch.setattr(trainer, "clip_loss", watched)
    assert train(tiny_dir, data, tmp_path / "run", "--steps", 1, "--batch-size", 8, "--local-loss") == 0
    assert modes == [True] and options(tmp_path / "run")["local_loss"] is True
    ours, theirs = losses(tmp_path / "run")[1], losses(plain_run)[1]
    assert abs(ours - theirs) <= LOSS_TOLERANCE * abs(theirs), (ours, theirs)
    assert_same_first_step(weights(tmp_path / "run" / "final"), weights(plain_run / "final"))


def test_local_loss_under_torchrun_logs_the_global_loss(tiny_dir, plain, tmp_path):
    """Two processes with --local-loss, 4 pairs each: each rank's loss is its own rows' (the two differ), the
    logged loss is their mean, and it equals one process's loss on the same batch of 8; so does the update,
    DDP averaging the local losses' gradients (assert_same_first_step). torchrun runs this file as a script,
    which records each rank's clip_loss calls (see the end of the file). 9-12 s on 2 cores."""
    data, plain_run = plain
    root = str(Path(miniclip.__file__).parents[1])  # the subprocesses import the miniclip this one did
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           __file__, "train", "--model", str(tiny_dir), "--data", str(data), "--workers", "0",
                           "--out", str(tmp_path / "run"), "--log-every", "1", "--steps", "1", "--batch-size", "4",
                           "--lr", str(LR), "--warmup", "1", "--local-loss"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": path,
                               "WATCH_CLIP_LOSS": str(tmp_path / "calls")})
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    calls = [json.loads((tmp_path / f"calls.{rank}").read_text()) for rank in (0, 1)]
    assert [c["local_loss"] for c in calls] == [True, True]
    assert read_log(tmp_path / "run")[0]["global_batch"] == 8 and options(tmp_path / "run")["local_loss"] is True
    logged, one = losses(tmp_path / "run")[1], losses(plain_run)[1]
    assert calls[0]["loss"] != calls[1]["loss"]
    assert logged == pytest.approx((calls[0]["loss"] + calls[1]["loss"]) / 2, rel=LOSS_TOLERANCE)
    assert abs(logged - one) <= LOSS_TOLERANCE * abs(one), (logged, one)
    assert_same_first_step(weights(tmp_path / "run" / "final"), weights(plain_run / "final"))


if __name__ == "__main__":  # torchrun's entry in the last test: the command, each rank's clip_loss call recorded
    from miniclip.train import trainer

    clip_loss, record = trainer.clip_loss, Path(f"{os.environ['WATCH_CLIP_LOSS']}.{os.environ['RANK']}")

    def watched(image, text, logit_scale, local_loss=False):
        loss = clip_loss(image, text, logit_scale, local_loss)
        record.write_text(json.dumps({"local_loss": local_loss, "loss": loss.item()}))  # one step: one call
        return loss

    trainer.clip_loss = watched
    sys.exit(main(sys.argv[1:]))
