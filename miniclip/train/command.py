"""`miniclip train`: fine-tuning (or training) from the shell, on one process or under torchrun.

    miniclip train --model ViT-B/32 --data pairs.csv --out run/ --steps 1000 [--val val.csv]
    torchrun --nproc_per_node 2 -m miniclip train ...          # --batch-size is per process

The loop is docs/training.md's script with what a run needs around it:
- data: a .csv, .jsonl or caption folder is indexed and shuffled whole (datasets.py, ShuffledBatches);
  WebDataset shards are streamed, split among ranks and DataLoader workers (shards.py). Either way the batch
  at step s depends on the seed and s alone. Unreadable samples are left out and counted, never fatal.
  --augment: random resized crops (augment.py) in place of the evaluation transform;
- run/log.jsonl: one JSON object per logged step (step, loss, lr, samples/s, skipped), per validation, and at
  the end a summary; a progress bar on stderr; with --tensorboard, the same numbers in run/tensorboard/;
- run/checkpoint/: the model and training state every --save-every steps and on Ctrl-C (the step in progress
  is finished first); `--resume run/` continues exactly where it stopped (bit for bit on the CPU): the data's
  position is the step count;
- run/best/: the model with the best validation recall@1 (--val pairs) or zero-shot top-1 (--val-zeroshot
  labelled images); run/final/: the model at the end, in the transformers layout.
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
    from . import Trainer, distributed, resume, save_checkpoint, save_model
    from .validation import Validation

    if (args.steps is None) == (args.epochs is None):
        raise InputError("give the run's length as --steps N or --epochs N (one of them)")
    checkpoint = (args.resume or args.out) / "checkpoint"
    if args.resume is not None and not (checkpoint / "training_state.pt").is_file():
        raise FileNotFoundError(f"--resume {args.resume}: no checkpoint to resume from ({checkpoint} is missing)")
    check_options(args)
    data = read_data(args)  # every mistake in the data and options is reported before the model loads
    validation = Validation.read(args)  # and of the validation data
    device = distributed.init()  # joins torchrun's process group, if started by torchrun
    if args.device is not None:
        device = torch.device(args.device)
    world, main = distributed.world_size(), distributed.is_main()
    global_batch = args.batch_size * world
    total = data.plan(args, world)
    model, preprocess = load_model(args, device)
    trainer = Trainer(model, train_config(args, total))
    # what the checkpoint keeps besides the trainer's state; what sets the batches must match on resuming
    same = {"global_batch": global_batch, "seed": args.seed, **data.identity,
            "augment": list(args.crop_scale or (0.9, 1.0)) if args.augment else None}
    state = {**same, "best": None, "skipped_images": 0}
    if args.resume is not None:
        check_same_run(state, resume(trainer, checkpoint) or {}, list(same), args.resume)
    out = args.out
    log = RunLog(out / "log.jsonl", out / "tensorboard" if args.tensorboard else None) if main else RunLog(None)
    log.write(event="start", step=trainer.step, total_steps=total, **data.identity,
              skipped_at_indexing=len(data.skipped), skipped=data.skipped[:100], processes=world,
              global_batch=global_batch, options=options_of(args))
    loader = data.batches(args, Transform.of(args, preprocess), trainer.step, total, world, device)
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
            if validation and (step % args.val_every == 0 or step == total):
                scores = validation.run(model, preprocess, args.batch_size, device)
                log.write(event="validation", step=step, **scores)
                if state["best"] is None or scores[validation.metric] > state["best"][validation.metric]:
                    state["best"] = {"step": step, validation.metric: scores[validation.metric]}
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
              + (f"; best validation {validation.metric} {best[validation.metric]:.3f} at step {best['step']} "
                 f"({out / 'best'})" if best else "") + f"; wrote {out / 'final'}", file=sys.stderr)
    return 0


def check_options(args) -> None:
    """What argparse cannot check alone."""
    if args.crop_scale is not None:
        low, high = args.crop_scale
        if not args.augment:
            raise InputError("--crop-scale sets the crops of --augment, which is not given")
        if not 0 < low <= high <= 1:
            raise InputError(f"--crop-scale {low} {high}: expected fractions of the image's area, "
                             "0 < MIN <= MAX <= 1")
    for flag, value in (("--val-classes", args.val_classes), ("--val-templates", args.val_templates)):
        if value is not None and args.val_zeroshot is None:
            raise InputError(f"{flag} belongs to --val-zeroshot DATA, which is not given")
    if args.tensorboard:
        from ..errors import require

        require("tensorboard", "tensorboard", "--tensorboard")  # now, not after the model has loaded


# -----------------------------------------------------------------------------
# The data: pairs indexed up front (datasets.py), or WebDataset shards streamed (shards.py)


def read_data(args):
    from ..index.sources import expand_tars, is_tar_pattern

    if is_tar_pattern(str(args.data)):
        return StreamedData(expand_tars([str(args.data)]), args)
    for flag, value in (("--streams", args.streams), ("--shuffle-buffer", args.shuffle_buffer)):
        if value is not None:
            raise InputError(f"{flag} is for WebDataset shards, which are streamed; {args.data} is indexed and "
                             "shuffled whole")
    return IndexedData(args)


class IndexedData:
    """A .csv, .jsonl or caption folder: every pair listed, each epoch a shuffle of them all."""

    def __init__(self, args):
        from .datasets import read_examples

        index = read_examples(args.data)
        self.examples, self.skipped = index.examples, index.skipped
        self.identity = {"examples": len(self.examples)}

    def plan(self, args, world: int) -> int:
        """The run's length in steps (--steps, or --epochs of the pairs)."""
        per_epoch = len(self.examples) // (args.batch_size * world)
        if per_epoch == 0:
            raise InputError(f"{args.data}: {len(self.examples)} usable pairs are fewer than one global batch of "
                             f"{args.batch_size} x {world} processes")
        return args.steps if args.steps is not None else args.epochs * per_epoch

    def batches(self, args, transform, start: int, stop: int, world: int, device):
        """(pixels or None, captions, [why each unreadable image was left out]) per step, this rank's share."""
        from . import ShuffledBatches, distributed
        from .datasets import KeyedBatches, TrainPairs, collate

        order = ShuffledBatches(len(self.examples), args.batch_size, seed=args.seed, start=start, stop=stop,
                                rank=distributed.rank(), world_size=world)
        return torch.utils.data.DataLoader(TrainPairs(self.examples, transform), batch_sampler=KeyedBatches(order),
                                           collate_fn=collate, num_workers=args.workers,
                                           worker_init_fn=ignore_interrupts, pin_memory=device.type == "cuda")


class StreamedData:
    """WebDataset shards, read as S streams (shards.py): no list of the samples, no length in epochs."""

    def __init__(self, shards: list[Path], args):
        if args.epochs is not None:
            raise InputError(f"--epochs: the samples of {args.data} are streamed, not counted; give --steps")
        self.shards, self.skipped = shards, []
        self.shuffle_buffer = 1000 if args.shuffle_buffer is None else args.shuffle_buffer

    def plan(self, args, world: int) -> int:
        from .shards import check_streams

        self.streams = args.streams or world * max(args.workers, 1)
        check_streams(len(self.shards), self.streams, args.batch_size * world, world, args.workers)
        self.identity = {"shards": len(self.shards), "streams": self.streams, "shuffle_buffer": self.shuffle_buffer}
        return args.steps

    def batches(self, args, transform, start: int, stop: int, world: int, device):
        from . import distributed
        from .shards import StreamedPairs

        pairs = StreamedPairs(self.shards, self.streams, args.batch_size * world, transform, seed=args.seed,
                              shuffle_buffer=self.shuffle_buffer, start=start, stop=stop, rank=distributed.rank(),
                              world_size=world, workers=args.workers)
        loader = torch.utils.data.DataLoader(pairs, batch_size=None, collate_fn=as_is, num_workers=args.workers,
                                             worker_init_fn=ignore_interrupts, pin_memory=device.type == "cuda")
        return join_workers(loader, max(args.workers, 1))


def as_is(item):
    return item


def join_workers(loader, workers: int):
    """A step's items from each of the DataLoader's workers (it yields them in turn) -> the rank's batch."""
    items = iter(loader)
    for first in items:
        group = [first] + [next(items) for _ in range(workers - 1)]
        if len({step for step, *_ in group}) != 1:  # cannot happen while each worker yields one item a step
            raise RuntimeError(f"DataLoader workers out of step: {[step for step, *_ in group]}")
        pixels = [p for _, p, _, _ in group if p is not None]
        yield (torch.cat(pixels) if pixels else None, [c for _, _, captions, _ in group for c in captions],
               [e for *_, errors in group for e in errors])


class Transform:
    """The training preprocessing: miniclip's evaluation transform, or with --augment a random resized crop
    (augment.py) seeded by (seed, the example's place in the run), so a resumed run crops alike."""

    def __init__(self, preprocess, crop=None, seed: int = 0):
        self.preprocess, self.crop, self.seed = preprocess, crop, seed

    @classmethod
    def of(cls, args, preprocess) -> "Transform":
        if not args.augment:
            return cls(preprocess)
        from .augment import RandomResizedCrop

        crop = RandomResizedCrop(preprocess) if args.crop_scale is None else \
            RandomResizedCrop(preprocess, scale=tuple(args.crop_scale))
        return cls(preprocess, crop, args.seed)

    def __call__(self, image, *key):
        if self.crop is None:
            return self.preprocess(image)
        from .shards import generator

        return self.crop(image, generator(self.seed, "crop", *key))


def checkpoint_of(out: Path) -> Path:
    return out / "checkpoint"


def load_model(args, device):
    """The starting checkpoint, fp32, plain (no inference speed-ups), set up as the options say."""
    from .. import pretrained
    from ..malloc import keep_freed_memory
    from . import towers

    # as every miniclip command: freed activations stay in the heap for the next step rather than being
    # page-faulted back in (miniclip/malloc.py); a training step frees and reallocates gigabytes
    keep_freed_memory()
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


def check_same_run(state: dict, saved: dict, keys: list[str], folder) -> None:
    """A resumed run must draw the same batches: the same global batch, seed, number of pairs (or shards,
    streams and shuffle buffer)."""
    for key in keys:
        if key in saved and saved[key] != state[key]:
            raise InputError(f"--resume {folder}: the run was started with {key} {saved[key]}, this one has "
                             f"{state[key]}; resume with the same data, batch size, processes, seed, --streams and --augment")
    state.update(saved)


class RunLog:
    """log.jsonl: one JSON object a line, flushed as written (rank 0 only; path None on the others); and with
    --tensorboard the same numbers as TensorBoard scalars (train/loss, val/recall@1, ...)."""

    def __init__(self, path: Path | None, tensorboard: Path | None = None):
        self.file = self.board = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(tensorboard))

    def write(self, **record) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.board is not None and record["event"] in ("step", "validation"):
            group = "train" if record["event"] == "step" else "val"
            for name, value in record.items():
                if name not in ("event", "step") and isinstance(value, (int, float)):
                    self.board.add_scalar(f"{group}/{name}", value, record["step"])
            self.board.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.board is not None:
            self.board.close()


def options_of(args) -> dict:
    """The command's options as the log records them (paths as text; the dispatch function left out)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
            if isinstance(v, (str, int, float, bool, list, type(None), Path))}


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
