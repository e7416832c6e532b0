"""`miniclip train`'s optional parts: --augment, --tensorboard, --val-zeroshot.

- --augment --crop-scale 1 1 on square pictures crops the whole picture, which is the evaluation transform:
  the same losses bit for bit; --augment with smaller crops changes them (each random crop is tested in
  tests/test_augment.py, resuming with crops in tests/test_train_cli.py);
- --tensorboard writes the log's numbers as TensorBoard scalars, read back with TensorBoard's own reader;
  without the package installed the run stops before the model loads, naming the pip command;
- --val-zeroshot: the top-1/top-5 logged at the last step equal `miniclip eval zeroshot` on the final model,
  and without --val the best checkpoint is the best top-1.
"""

import json
import sys

import pytest
from test_train_cli import losses, read_log, toy_pairs, train, write_csv, write_tars

from miniclip.cli import main


def test_augment_crops_and_the_whole_picture_crop_is_the_eval_transform(tiny_dir, tmp_path, one_thread):
    data = write_csv(tmp_path / "data", toy_pairs())
    common = ["--steps", 3, "--batch-size", 8]
    assert train(tiny_dir, data, tmp_path / "plain", *common) == 0
    # a box of the whole 32x32 picture: scale 1 leaves only aspects that round to 32x32 (a box of another
    # aspect does not fit, and after 10 tries the fallback is the whole square), resized to 32x32: no change
    assert train(tiny_dir, data, tmp_path / "whole", *common, "--augment", "--crop-scale", 1, 1) == 0
    assert train(tiny_dir, data, tmp_path / "crops", *common, "--augment", "--crop-scale", 0.3, 0.6) == 0
    plain, whole, crops = (losses(tmp_path / run) for run in ("plain", "whole", "crops"))
    assert plain == whole
    assert crops[1] != plain[1]
    assert read_log(tmp_path / "crops")[0]["options"]["crop_scale"] == [0.3, 0.6]


def test_resuming_with_other_crops_is_refused(tiny_dir, tmp_path, capsys, one_thread):
    """The crops are part of what a step's batch is: a resumed run must make the same ones."""
    data = write_csv(tmp_path / "data", toy_pairs(variants=1)[:8])
    assert train(tiny_dir, data, tmp_path / "run", "--steps", 2, "--batch-size", 8, "--save-every", 1) == 0
    capsys.readouterr()
    assert train(tiny_dir, data, tmp_path / "run", "--steps", 2, "--batch-size", 8, "--augment",
                 "--resume", tmp_path / "run") == 1
    assert "started with augment None, this one has [0.9, 1.0]" in capsys.readouterr().err


def test_option_mistakes_are_refused_before_the_model_loads(tmp_path, capsys):
    data = write_csv(tmp_path / "data", toy_pairs(variants=1)[:8])
    run = ["train", "--model", str(tmp_path / "no-model"), "--data", str(data), "--out", str(tmp_path / "r"),
           "--steps", "1", "--batch-size", "8", "--workers", "0"]
    for more, message in ((["--crop-scale", "0.5", "1"], "--crop-scale sets the crops of --augment"),
                          (["--augment", "--crop-scale", "0.5", "1.5"], "--crop-scale 0.5 1.5: expected"),
                          (["--val-classes", "imagenet"], "--val-classes belongs to --val-zeroshot DATA"),
                          (["--val-templates", "simple"], "--val-templates belongs to --val-zeroshot DATA"),
                          (["--streams", "2"], "--streams is for WebDataset shards"),
                          (["--shuffle-buffer", "2"], "--shuffle-buffer is for WebDataset shards")):
        assert main(run + more) == 1, more
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    shards = write_tars(tmp_path / "tars", toy_pairs(variants=1), shards=2)
    streamed = ["train", "--model", str(tmp_path / "no-model"), "--data", shards, "--out", str(tmp_path / "s"),
                "--batch-size", "4"]
    for more, message in ((["--epochs", "1"], "streamed, not counted; give --steps"),
                          (["--steps", "1", "--workers", "2", "--streams", "3"],
                           "--streams 3 cannot be shared by 1 processes x 2 DataLoader workers"),
                          (["--steps", "1", "--workers", "0", "--streams", "3"], "global batch of 4"),
                          (["--steps", "1", "--workers", "4"], "2 shards for 4 streams")):
        assert main(streamed + more) == 1, more
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_tensorboard_scalars_are_the_logged_numbers(tiny_dir, tmp_path, one_thread):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = write_csv(tmp_path / "data", toy_pairs())
    assert train(tiny_dir, data, tmp_path / "run", "--steps", 4, "--batch-size", 8, "--tensorboard",
                 "--val", data, "--val-every", 2) == 0
    board = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    board.Reload()
    # the event file holds float32: equal to the log's numbers to float32's rounding, 2^-24 relative
    logged, loss = {s.step: s.value for s in board.Scalars("train/loss")}, losses(tmp_path / "run")
    assert logged.keys() == loss.keys() == {1, 2, 3, 4}
    assert all(logged[s] == pytest.approx(loss[s], rel=1e-7) for s in loss)
    recall = {s.step: s.value for s in board.Scalars("val/recall@1")}
    val = {r["step"]: r["recall@1"] for r in read_log(tmp_path / "run") if r["event"] == "validation"}
    assert recall.keys() == val.keys() == {2, 4}
    assert all(recall[s] == pytest.approx(val[s], rel=1e-7) for s in val)
    assert {"train/lr", "train/samples_per_s"} <= set(board.Tags()["scalars"])


def test_without_tensorboard_installed_the_run_stops_naming_the_install(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed: its import raises
    data = write_csv(tmp_path / "data", toy_pairs(variants=1)[:8])
    assert train(tiny_dir, data, tmp_path / "run", "--steps", 1, "--batch-size", 8, "--tensorboard") == 1
    err = capsys.readouterr().err
    assert "--tensorboard needs tensorboard" in err and 'pip install "miniclip[tensorboard]"' in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_zeroshot_validation_equals_eval_zeroshot_on_the_final_model(tiny_dir, tmp_path, one_thread, capsys):
    pairs = toy_pairs()
    data = write_csv(tmp_path / "data", pairs)
    classes = tmp_path / "classes"  # one folder per colour: "red", ...; the pictures are the training ones
    for name, image, caption in pairs:
        (classes / caption.split()[1]).mkdir(parents=True, exist_ok=True)
        image.save(classes / caption.split()[1] / f"{name}.png")
    assert train(tiny_dir, data, tmp_path / "run", "--steps", 4, "--batch-size", 8, "--val-zeroshot", classes,
                 "--val-templates", "simple", "--val-every", 2) == 0
    log = read_log(tmp_path / "run")
    scores = {r["step"]: r for r in log if r["event"] == "validation"}
    assert scores.keys() == {2, 4}
    capsys.readouterr()
    assert main(["eval", "zeroshot", str(classes), "--model", str(tmp_path / "run" / "final"), "--templates",
                 "simple", "--json", "--no-cache"]) == 0
    reference = json.loads(capsys.readouterr().out)
    assert scores[4]["zeroshot_top1"] == reference["top1"]
    assert scores[4]["zeroshot_top5"] == reference["top5"]
    best = max(scores.values(), key=lambda r: r["zeroshot_top1"])  # the first of equals, as the run keeps it
    assert log[-1]["best"] == {"step": best["step"], "zeroshot_top1": best["zeroshot_top1"]}
    assert (tmp_path / "run" / "best" / "config.json").is_file()
