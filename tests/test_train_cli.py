"""`miniclip train`: the command line's training runs on a toy captioned set (coloured shapes drawn with PIL,
"a red circle"), a tiny model, the CPU.

- the same data as a CSV, a caption folder and WebDataset shards gives the same first-step loss, and the run's
  final/ folder loads in miniclip and in transformers with equal embeddings;
- a corrupt image and a missing caption are counted in log.jsonl, and the run goes on;
- Ctrl-C after k steps (a real SIGINT, in process), or SIGKILL of a running process, then --resume: final
  weights equal an uninterrupted run's;
- validation recall@1 rises from chance to >= 0.9 (a tiny model from scratch, tests/test_train_task.py's task);
- two processes under torchrun, reading 4 WebDataset shards, give the loss curve of one process on the same
  global batch for 20 steps, and go on past a corrupt image;
- user errors (no length, nothing to resume, other data on resume, a missing image file) are one line, status 1.

About 50 s on 2 CPU cores, a third of it the two torchrun launches.
"""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from miniclip import CLIP
from miniclip.cli import main

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (40, 60, 240), "yellow": (240, 220, 30)}
SHAPES = ("circle", "square", "triangle")


def draw(colour: str, shape: str, variant: int, size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), (20 + 10 * variant, 20, 20))
    box = (6 + variant, 6, size - 6 + variant - 2, size - 6)
    d = ImageDraw.Draw(image)
    if shape == "circle":
        d.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        d.rectangle(box, fill=COLOURS[colour])
    else:
        d.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=COLOURS[colour])
    return image


def toy_pairs(variants: int = 2, size: int = 32):
    """[(file name, image, caption)], sorted by name: every colour x shape, `variants` pictures of each."""
    out = []
    for colour in COLOURS:
        for shape in SHAPES:
            for v in range(variants):
                out.append((f"{colour}_{shape}_{v}", draw(colour, shape, v, size), f"a {colour} {shape}"))
    return sorted(out)


def write_csv(folder: Path, pairs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["image,caption"]
    for name, image, caption in pairs:
        image.save(folder / f"{name}.png")
        lines.append(f"{name}.png,{caption}")
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
    return folder / "pairs.csv"


def write_folder(folder: Path, pairs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image, caption in pairs:
        image.save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(caption)
    return folder


def write_tars(folder: Path, pairs, shards: int = 2) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(pairs) // shards)
    for s in range(shards):
        with tarfile.open(folder / f"{s:03d}.tar", "w") as tar:
            for name, image, caption in pairs[s * per:(s + 1) * per]:
                png = io.BytesIO()
                image.save(png, format="PNG")
                for ext, data in (("png", png.getvalue()), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{name}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / ("{000..%03d}.tar" % (shards - 1)))


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(out) if r["event"] == "step"}


def train(model, data, out, *more) -> int:
    return main(["train", "--model", str(model), "--data", str(data), "--out", str(out), "--workers", "0",
                 "--log-every", "1", "--lr", "1e-4", "--warmup", "1", *map(str, more)])


def test_csv_folder_and_shards_train_alike_and_load_in_transformers(tiny_dir, tmp_path, one_thread):
    """The same 24 pairs as a CSV, a JSONL, a caption folder and WebDataset shards, in batches of all 24.
    The three indexed layouts list the pairs in the same order and shuffle them alike: equal losses, bit for
    bit. The shards are streamed in their own order; the contrastive loss of a batch does not depend on the
    order of its rows (the same rows and columns, permuted together), so their first loss equals the others'
    but for float rounding: the cross-entropies are summed in another order, 24 terms of about 3, a few
    ulps of float32 (1e-6 relative bounds it with room)."""
    pairs = toy_pairs()
    sources = {"csv": write_csv(tmp_path / "csv", pairs), "folder": write_folder(tmp_path / "folder", pairs),
               "tars": write_tars(tmp_path / "tars", pairs)}
    sources["jsonl"] = tmp_path / "csv" / "pairs.jsonl"  # beside the CSV's images
    sources["jsonl"].write_text("".join(json.dumps({"image": f"{name}.png", "caption": caption}) + "\n"
                                        for name, _, caption in pairs))
    first = {}
    for kind, data in sources.items():
        streamed = ["--shuffle-buffer", 0] if kind == "tars" else []
        assert train(tiny_dir, data, tmp_path / f"run-{kind}", "--steps", 2, "--batch-size", 24, *streamed) == 0
        first[kind] = losses(tmp_path / f"run-{kind}")[1]
        start = read_log(tmp_path / f"run-{kind}")[0]
        if kind == "tars":
            assert start["shards"] == 2 and start["streams"] == 1
        else:
            assert start["examples"] == len(pairs) and start["skipped_at_indexing"] == 0
    print(first)
    assert first["csv"] == first["folder"] == first["jsonl"]
    assert abs(first["tars"] - first["csv"]) <= 1e-6 * first["csv"]
    assert first["csv"] > 1.0  # not a degenerate loss: log(24) = 3.18 at chance

    from transformers import CLIPModel

    final = tmp_path / "run-csv" / "final"
    ours, theirs = CLIP.from_pretrained(final), CLIPModel.from_pretrained(final).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = ours.tokenize(["a red circle", "a blue square"])
    with torch.no_grad():
        for a, b in ((ours.encode_image(pixels), theirs.get_image_features(pixel_values=pixels)),
                     (ours.encode_text(ids), theirs.get_text_features(input_ids=ids))):
            b = getattr(b, "pooler_output", b)
            assert (a - b).abs().max() < 1e-5, (a - b).abs().max()
    # the folder's own CLIPProcessor (its preprocessor_config.json and tokenizer files) feeds CLIPModel the inputs
    # miniclip.load's preprocess and tokenizer make: the same embeddings (1e-5, as above)
    import warnings

    from transformers import CLIPProcessor

    import miniclip

    with warnings.catch_warnings():  # CLIPImageProcessor's "falling back to CLIPImageProcessorPil" warning
        warnings.simplefilter("ignore")
        processor = CLIPProcessor.from_pretrained(final)
    loaded, preprocess = miniclip.load(final)
    images, captions = [image for _, image, _ in pairs[:3]], [caption for *_, caption in pairs[:3]]
    inputs = processor(text=captions, images=images, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        for a, b in ((loaded.encode_image(preprocess(images)), theirs.get_image_features(
                         pixel_values=inputs["pixel_values"])),
                     (loaded.encode_text(loaded.tokenize(captions)), theirs.get_text_features(
                         input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]))):
            b = getattr(b, "pooler_output", b)
            assert (a - b).abs().max() < 1e-5, (a - b).abs().max()
    # the weights moved from the starting checkpoint's
    before, after = CLIP.from_pretrained(tiny_dir).state_dict(), ours.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_corrupt_image_and_missing_caption_are_skipped_and_counted(tiny_dir, tmp_path, one_thread):
    data = write_csv(tmp_path / "data", toy_pairs(variants=1)[:7])
    (tmp_path / "data" / "broken.png").write_bytes(b"this is not a png")
    with open(data, "a") as f:
        f.write("broken.png,a broken picture\n")
        f.write("red_circle_0.png,\n")  # no caption
    assert train(tiny_dir, data, tmp_path / "run", "--steps", 2, "--batch-size", 8) == 0
    log = read_log(tmp_path / "run")
    assert log[0]["skipped_at_indexing"] == 1 and "no caption" in log[0]["skipped"][0]
    skipped = [r for r in log if r["event"] == "skipped"]
    assert len(skipped) == 2 and all("broken.png" in r["sample"] for r in skipped)  # in both steps' batch
    assert log[-1]["event"] == "summary" and log[-1]["skipped_images"] == 2 and log[-1]["steps"] == 2
    assert (tmp_path / "run" / "final" / "config.json").is_file()


def test_user_errors_are_one_line_and_name_the_problem(tiny_dir, tmp_path, capsys):
    data = write_csv(tmp_path / "data", toy_pairs(variants=1)[:8])
    run = ["train", "--model", str(tiny_dir), "--data", str(data), "--workers", "0", "--batch-size", "8"]
    assert main(run + ["--out", str(tmp_path / "a")]) == 1
    assert "--steps N or --epochs N" in capsys.readouterr().err
    assert main(run + ["--out", str(tmp_path / "a"), "--steps", "1", "--resume", str(tmp_path / "none")]) == 1
    assert "no checkpoint to resume from" in capsys.readouterr().err
    assert main(run + ["--out", str(tmp_path / "a"), "--steps", "1", "--batch-size", "9"]) == 1
    assert "fewer than one global batch" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("image,caption\nmissing.png,a cat\n")
    assert main(run + ["--out", str(tmp_path / "a"), "--steps", "1", "--data", str(tmp_path / "bad.csv")]) == 1
    assert "bad.csv, line 2: no such image file" in capsys.readouterr().err
    assert main(run + ["--out", str(tmp_path / "a"), "--steps", "1", "--lock-image", "99"]) == 1
    assert "--lock-image 99: this tower has 2 blocks" in capsys.readouterr().err
    for flag in ("--lock-text", "--warmup", "--workers"):  # argparse refuses these with status 2
        with pytest.raises(SystemExit) as refused:
            main(run + ["--out", str(tmp_path / "a"), "--steps", "1", flag, "-1"])
        assert refused.value.code == 2 and "must be 0 or more, got -1" in capsys.readouterr().err
    # --epochs: 8 pairs, a batch of 8: one step an epoch; resuming with other data is refused
    assert main(run + ["--out", str(tmp_path / "b"), "--epochs", "2"]) == 0
    assert read_log(tmp_path / "b")[-1]["steps"] == 2
    other = write_csv(tmp_path / "other", toy_pairs(variants=1)[:9])
    assert main(run + ["--out", str(tmp_path / "b"), "--epochs", "2", "--data", str(other),
                       "--resume", str(tmp_path / "b")]) == 1
    assert "examples 8, this one has 9" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["csv", "shards"])
def test_interrupt_and_resume_equal_an_uninterrupted_run(kind, tiny_dir, tmp_path, monkeypatch, one_thread):
    """Ctrl-C after step 3, then --resume. "shards": 4 WebDataset shards streamed by 2 DataLoader worker
    processes, with random resized crops (--augment): the resumed run passes over the samples of the steps
    done and crops each later sample as the uninterrupted run did."""
    common = ["--steps", 6, "--batch-size", 8, "--save-every", 4]
    if kind == "csv":
        data = write_csv(tmp_path / "data", toy_pairs())
    else:
        data = write_tars(tmp_path / "tars", toy_pairs(), shards=4)
        common += ["--workers", 2, "--streams", 4, "--shuffle-buffer", 5, "--augment", "--crop-scale", 0.5, 1]
    assert train(tiny_dir, data, tmp_path / "whole", *common) == 0

    from miniclip.train import Trainer

    update = Trainer.update

    def update_then_ctrl_c(self):
        update(self)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the command finishes the step, saves, exits 130

    monkeypatch.setattr(Trainer, "update", update_then_ctrl_c)
    assert train(tiny_dir, data, tmp_path / "cut", *common) == 130
    monkeypatch.setattr(Trainer, "update", update)
    assert json.loads((tmp_path / "cut" / "log.jsonl").read_text().splitlines()[-1]) == \
        {"event": "interrupted", "step": 3}
    assert train(tiny_dir, data, tmp_path / "cut", *common, "--resume", tmp_path / "cut") == 0

    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")
    whole = CLIP.from_pretrained(tmp_path / "whole" / "final").state_dict()
    resumed = CLIP.from_pretrained(tmp_path / "cut" / "final").state_dict()
    assert whole.keys() == resumed.keys()
    different = [k for k in whole if not torch.equal(whole[k], resumed[k])]
    assert not different, different[:5]


def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny_dir, tmp_path, one_thread):
    """SIGKILL gives the run no chance to save: --resume goes back to the last periodic checkpoint (step 10 or
    later) and recomputes from there; the final weights still equal an uninterrupted run's bit for bit."""
    import time

    data = write_csv(tmp_path / "data", toy_pairs())
    common = ["--steps", 40, "--batch-size", 8, "--save-every", 5]
    command = [sys.executable, "-m", "miniclip", "train", "--model", str(tiny_dir), "--data", str(data),
               "--out", str(tmp_path / "killed"), "--workers", "0", "--log-every", "1", "--lr", "1e-4",
               "--warmup", "1", *map(str, common)]
    run = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    log = tmp_path / "killed" / "log.jsonl"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and run.poll() is None:
            if log.is_file() and any(r.get("step", 0) >= 12 for r in read_log(tmp_path / "killed")
                                     if r["event"] == "step"):
                break
            time.sleep(0.02)
        run.send_signal(signal.SIGKILL)
    finally:
        run.wait(timeout=60)
    events = [r["event"] for r in read_log(tmp_path / "killed")]
    assert "summary" not in events and "interrupted" not in events, "the run ended before the kill"
    assert train(tiny_dir, data, tmp_path / "killed", *common, "--resume", tmp_path / "killed") == 0
    assert train(tiny_dir, data, tmp_path / "whole", *common) == 0
    whole = CLIP.from_pretrained(tmp_path / "whole" / "final").state_dict()
    resumed = CLIP.from_pretrained(tmp_path / "killed" / "final").state_dict()
    different = [k for k in whole if not torch.equal(whole[k], resumed[k])]
    assert not different, different[:5]


def test_validation_recall_rises_from_chance(tmp_path, one_thread):
    """tests/test_train_task.py's tiny model from scratch, trained from PNG files by the command. Batches are
    drawn from a fixed set of pictures, and may hold a caption twice (a false negative), so it learns more
    slowly than test_train_task.py's fresh, duplicate-free batches. Batches of 24 (two of each caption, on
    average) learn it faster than batches of 12: measured best recall@1 within 300 steps for weight seeds
    0, 1, 2, 3: 1.0, 0.958, 1.0, 0.958 (batches of 12: 0.958, 1.0, 0.917, 0.958). Seed 0 here; 12 held-out
    pictures, so recall moves in steps of 1/24."""
    from test_train_task import CONFIG, PAIRS, picture

    from miniclip.train import save_model
    from miniclip.train.validation import validate

    torch.manual_seed(0)
    model = CLIP(CONFIG)
    save_model(model, tmp_path / "start")

    def write(folder: Path, seeds) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        lines = ["image,caption"]
        for seed in seeds:
            g = torch.Generator().manual_seed(seed)
            for colour, shape in PAIRS:
                pixels = (picture(colour, shape, g) * 255).round().byte().permute(1, 2, 0).numpy()
                name = f"{seed}_{colour}_{shape}.png"
                Image.fromarray(pixels).save(folder / name)
                lines.append(f"{name},a {colour} {shape}")
        (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
        return folder / "pairs.csv"

    train_csv = write(tmp_path / "train", range(64))  # 768 pictures
    val_csv = write(tmp_path / "val", [1000])  # 12 unseen pictures, one per caption: chance is 1/12
    from miniclip import load
    from miniclip.evaluate.datasets import read_pairs

    start, preprocess = load(tmp_path / "start", speedups=False)
    before = validate(start, preprocess, read_pairs(val_csv), 12, torch.device("cpu"))["recall@1"]
    assert before < 0.4
    assert main(["train", "--model", str(tmp_path / "start"), "--data", str(train_csv), "--val", str(val_csv),
                 "--out", str(tmp_path / "run"), "--workers", "0", "--steps", "300", "--batch-size", "24",
                 "--lr", "2e-3", "--warmup", "20", "--weight-decay", "0.05", "--val-every", "50",
                 "--log-every", "50"]) == 0
    scores = [r["recall@1"] for r in read_log(tmp_path / "run") if r["event"] == "validation"]
    summary = read_log(tmp_path / "run")[-1]
    print(f"recall@1 {before:.2f} before, then {scores}")
    assert summary["best"]["recall@1"] == max(scores) >= 0.9
    assert (tmp_path / "run" / "best" / "config.json").is_file()


def test_two_processes_give_the_loss_curve_of_one(tiny_dir, tmp_path):
    """4 WebDataset shards read as 4 streams (shards.py), by 2 processes (2 streams each) or by 1 (all 4):
    each global batch holds the same 8 samples, so the losses are equal but for the order of the rows, float
    rounding, which over 20 steps of updates grows to 1.7e-6 relative (measured); the bound is 1e-5, as the
    issue asks. 20 steps of 8 are 6 epochs of the 24 pairs,
    through shuffle buffers of 3."""
    data = write_tars(tmp_path / "tars", toy_pairs(), shards=4)  # 4 WebDataset shards, as a brace pattern
    common = ["--model", str(tiny_dir), "--data", data, "--workers", "0", "--log-every", "1",
              "--steps", "20", "--lr", "1e-4", "--warmup", "1", "--streams", "4", "--shuffle-buffer", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           "-m", "miniclip", "train", *common, "--batch-size", "4", "--out", str(tmp_path / "two")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    assert main(["train", *common, "--batch-size", "8", "--out", str(tmp_path / "one")]) == 0
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    print(one, two)
    assert one.keys() == two.keys() == set(range(1, 21))
    print("largest relative difference", max(abs(one[s] - two[s]) / abs(one[s]) for s in one))
    for step in one:
        assert abs(one[step] - two[step]) <= 1e-5 * abs(one[step]), (step, one[step], two[step])


def test_two_processes_go_on_past_a_corrupt_image(tiny_dir, tmp_path):
    """A rank whose share lost an image: every rank uses as many rows as the smallest share, and the skipped
    image is counted over all ranks."""
    data = write_csv(tmp_path / "data", toy_pairs(variants=1)[:7])
    (tmp_path / "data" / "broken.png").write_bytes(b"this is not a png")
    with open(data, "a") as f:
        f.write("broken.png,a broken picture\n")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           "-m", "miniclip", "train", "--model", str(tiny_dir), "--data", str(data), "--workers", "0",
                           "--log-every", "1", "--steps", "2", "--batch-size", "4", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    summary = read_log(tmp_path / "run")[-1]
    assert summary["steps"] == 2 and summary["skipped_images"] == 2  # the batch of 8 holds it at both steps
