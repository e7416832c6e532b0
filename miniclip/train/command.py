"""`miniclip train`: fine-tuning (or training) from the shell, on one process or under torchrun.

    miniclip train --model ViT-B/32 --data pairs.csv --out run/ --steps 1000 [--val val.csv]
    torchrun --nproc_per_node 2 -m miniclip train ...          # --batch-size is per process

The loop is docs/training.md's script with what a run needs around it:
- data: train/datasets.py (a .csv, .jsonl, caption folder or WebDataset shards), ShuffledBatches for the order;
  unreadable samples are left out and counted, never fatal;
- run/log.jsonl: one JSON object per logged step (step, loss, lr, samples/s, skipped), per validation, and at
  the end a summary; a progress bar on stderr;
- run/checkpoint/: the model and training state every --save-every steps and on Ctrl-C (the step in progress
  is finished first); `--resume run/` continues exactly where it stopped (bit for bit on the CPU): the data's
  position is the step count;
- run/best/: the model with the best validation recall@1 (with --val); run/final/: the model at the end, in
  the transformers layout.
"""

import json
import signal
import sys
import time
from pathlib import Path

import torch

from ..errors import InputError


def run(args) -> int:
    from ..cli import progress_bar
    from . import ShuffledBatches, Trainer, distributed, resume, save_checkpoint, save_model
    from .datasets import TrainPairs, collate, read_examples

    if (args.steps is None) == (args.epochs is None):
        raise InputError("give the run's length as --steps N or --epochs N (one of them)")
    checkpoint = (args.resume or args.out) / "checkpoint"
    if args.resume is not None and not (checkpoint / "training_state.pt").is_file():
        raise FileNotFoundError(f"--resume {args.resume}: no checkpoint to resume from ({checkpoint} is missing)")
    data = read_examples(args.data)  # every mistake in the tables is reported before the model loads
    val = None
    if args.val is not None:
        from ..evaluate.datasets import read_pairs

        val = read_pairs(args.val)
    device = distributed.init()  # joins torchrun's process group, if started by torchrun
    if args.device is not None:
        device = torch.device(args.device)
    world, main = distributed.world_size(), distributed.is_main()
    global_batch = args.batch_size * world
    per_epoch = len(data.examples) // global_batch
    if per_epoch == 0:
        raise InputError(f"{args.data}: {len(data.examples)} usable pairs are fewer than one global batch of "
                         f"{args.batch_size} x {world} processes")
    total = args.steps if args.steps is not None else args.epochs * per_epoch
    model, preprocess = load_model(args, device)
    trainer = Trainer(model, train_config(args, total))
    # what the checkpoint keeps besides the trainer's state; the first three must match on resuming
    state = {"examples": len(data.examples), "global_batch": global_batch, "seed": args.seed, "best": None,
             "skipped_images": 0}
    if args.resume is not None:
        check_same_run(state, resume(trainer, checkpoint) or {}, args.resume)
    out = args.out
    log = RunLog(out / "log.jsonl" if main else None)
    log.write(event="start", step=trainer.step, total_steps=total, examples=len(data.examples),
              skipped_at_indexing=len(data.skipped), skipped=data.skipped[:100], processes=world,
              global_batch=global_batch)
    batches = ShuffledBatches(len(data.examples), args.batch_size, seed=args.seed, start=trainer.step, stop=total,
                              rank=distributed.rank(), world_size=world)
    loader = torch.utils.data.DataLoader(TrainPairs(data.examples, preprocess), batch_sampler=batches,
                                         collate_fn=collate, num_workers=args.workers,
                                         worker_init_fn=ignore_interrupts, pin_memory=device.type == "cuda")
    stop = InterruptFlag()
    bar = progress_bar(total, "training steps", initial=trainer.step) if main else None
    started, first_step, interrupted, loss = time.perf_counter(), trainer.step, False, None
    try:
        for pixels, captions, errors in loader:
            for error in errors:  # this rank's; the count below is every rank's
                log.write(event="skipped", step=trainer.step, sample=error)
            n, skipped, interrupted = agree(len(captions), len(errors), stop.is_set())
            if interrupted:  # Ctrl-C came during the last step: stop before this one
                break
            state["skipped_images"] += skipped
            if n == 0:
                raise InputError("no image of a whole batch could be read: see the skipped samples in log.jsonl")
            ids = model.tokenize(captions[:n], truncate=True).to(device)
            loss = trainer.train_step(pixels[:n].to(device, non_blocking=True), ids)
            step = trainer.step
            if step % args.log_every == 0 or step == total or step == first_step + 1:
                rate = (step - first_step) * global_batch / (time.perf_counter() - started)
                value, lr = distributed.all_mean(loss).item(), trainer.optimizer.param_groups[0]["lr"]
                log.write(event="step", step=step, loss=value, lr=lr, samples_per_s=rate,
                          skipped_images=state["skipped_images"])
                if bar is not None:
                    bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.1f}")
            if bar is not None:
                bar.update(1)
            if val is not None and (step % args.val_every == 0 or step == total):
                scores = validate(model, preprocess, val, args.batch_size, device)
                log.write(event="validation", step=step, **scores)
                if state["best"] is None or scores["recall@1"] > state["best"]["recall@1"]:
                    state["best"] = {"step": step, "recall@1": scores["recall@1"]}
                    if main:
                        save_model(model, out / "best")
            if step % args.save_every == 0 and step < total:
                save_checkpoint(trainer, checkpoint_of(out), extra=state)
        save_checkpoint(trainer, checkpoint_of(out), extra=state)
    finally:
        stop.restore()
        if bar is not None:
            bar.close()
    if interrupted:
        log.write(event="interrupted", step=trainer.step)
        log.close()
        if main:
            print(f"miniclip: interrupted after step {trainer.step}; saved {checkpoint_of(out)}; continue with "
                  f"the same options and --resume {out}", file=sys.stderr)
        return 130
    if main:
        save_model(model, out / "final")
    final_loss = None if loss is None else distributed.all_mean(loss).item()
    elapsed, best = time.perf_counter() - started, state["best"]
    log.write(event="summary", steps=trainer.step, final_loss=final_loss, seconds=elapsed,
              skipped_at_indexing=len(data.skipped), skipped_images=state["skipped_images"], best=best)
    log.close()
    if main:
        shown = "-" if final_loss is None else f"{final_loss:.4f}"
        print(f"trained {trainer.step} steps in {elapsed:.1f}s, final loss {shown}; "
              f"{len(data.skipped) + state['skipped_images']} unreadable samples skipped"
              + (f"; best validation recall@1 {best['recall@1']:.3f} at step {best['step']} ({out / 'best'})"
                 if best else "") + f"; wrote {out / 'final'}", file=sys.stderr)
    return 0


def checkpoint_of(out: Path) -> Path:
    return out / "checkpoint"


def load_model(args, device):
    """The starting checkpoint, fp32, plain (no inference speed-ups), set up as the options say."""
    from .. import pretrained
    from . import towers

    torch.manual_seed(args.seed)
    model, preprocess = pretrained.load(args.model, device=device, speedups=False)
    model.float()
    if args.grad_checkpointing:
        towers.checkpoint_blocks(model)
    for flag, tower, unlocked in (("--lock-image", model.visual, args.lock_image),
                                  ("--lock-text", model.text, args.lock_text)):
        if unlocked is None:
            continue
        if unlocked > len(towers.blocks(tower)):
            raise InputError(f"{flag} {unlocked}: this tower has {len(towers.blocks(tower))} blocks to leave "
                             "trainable (0 freezes it whole)")
        towers.lock(tower, unlocked_blocks=unlocked)
    return model, preprocess


def train_config(args, total: int):
    from . import TrainConfig

    return TrainConfig(total_steps=total, warmup_steps=min(args.warmup, total), lr=args.lr,
                       weight_decay=args.weight_decay, precision=args.precision, micro_batches=args.micro_batches,
                       local_loss=args.local_loss)


def check_same_run(state: dict, saved: dict, folder) -> None:
    """A resumed run must draw the same batches: the same number of pairs, global batch and seed."""
    for key in ("examples", "global_batch", "seed"):
        if key in saved and saved[key] != state[key]:
            raise InputError(f"--resume {folder}: the run was started with {key} {saved[key]}, this one has "
                             f"{state[key]}; resume with the same data, batch size, processes and seed")
    state.update(saved)


class RunLog:
    """log.jsonl: one JSON object a line, flushed as written (rank 0 only; path None on the others)."""

    def __init__(self, path: Path | None):
        self.file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run

    def write(self, **record) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def agree(kept: int, skipped: int, interrupted: bool) -> tuple[int, int, bool]:
    """What every rank must agree on after reading its share of a batch: the rows each uses (the smallest
    share, as the gathered loss needs as many rows from each; a share is smaller only where an image could not
    be read), the images skipped on all ranks, and whether Ctrl-C reached any (so all stop after one step)."""
    from . import distributed

    if not distributed.is_distributed():
        return kept, skipped, interrupted
    import torch.distributed as dist

    least = torch.tensor([kept])
    dist.all_reduce(least, op=dist.ReduceOp.MIN)
    total = torch.tensor([skipped, int(interrupted)])
    dist.all_reduce(total)
    return int(least), int(total[0]), bool(total[1])


def ignore_interrupts(worker_id: int) -> None:
    """In DataLoader workers: Ctrl-C is the main process's to handle (it reaches the whole process group)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class InterruptFlag:
    """SIGINT sets a flag instead of raising KeyboardInterrupt in the middle of a step (an optimizer step half
    done would be saved). A second Ctrl-C raises as usual."""

    def __init__(self):
        self.flag, self.old = False, signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum, frame):
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True

    def is_set(self) -> bool:
        return self.flag

    def restore(self):
        signal.signal(signal.SIGINT, self.old)


@torch.no_grad()
def validate(model, preprocess, pairs, batch_size: int, device) -> dict:
    """Retrieval recall@1/5 on the validation pairs (miniclip/evaluate/retrieval.py); "recall@1" is the mean of
    the two directions' R@1. Every rank computes it (the same numbers)."""
    from ..evaluate.retrieval import retrieval_recall

    was_training = model.training
    model.eval()
    images = torch.cat([model.encode_image(preprocess(pairs.images[i:i + batch_size]).to(device)).float().cpu()
                        for i in range(0, len(pairs.images), batch_size)])
    texts = torch.cat([model.encode_text(model.tokenize(pairs.captions[i:i + batch_size], truncate=True)
                                         .to(device)).float().cpu()
                       for i in range(0, len(pairs.captions), batch_size)])
    model.train(was_training)
    table = retrieval_recall(images, texts, pairs.caption_image, ks=(1, 5))
    table["recall@1"] = (table["image_to_text_R@1"] + table["text_to_image_R@1"]) / 2
    return table
