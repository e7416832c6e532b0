"""`miniclip embed SRC --out FOLDER`: sharded, resumable, and the same on 2 torchrun processes as on one.

References: the model itself on each image alone (the rows), a 1-process run (for 2 processes, bit for bit:
both embed each shard in the same batches, on one thread each), an uninterrupted run (after SIGKILL and a
rerun), and the stand-in model's known size (memory)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_cli import make_image

from miniclip import cli, load
from miniclip.index import layout
from miniclip.index.layout import Collection
from miniclip.index.sources import read_file_list

WORKER = Path(__file__).parent / "embed_worker.py"
N_IMAGES = 23  # 5 shards of 5, the last one of 3
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # every run on one thread: same arithmetic in every process


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    sizes = [(48, 40), (40, 48), (64, 64), (33, 50)]
    for i in range(N_IMAGES):
        make_image(folder / f"sub{i % 2}" / f"img{i:03d}.{'png' if i % 3 else 'jpg'}", size=sizes[i % 4], seed=i)
    return folder


def embed_command(photos, out, model_dir, *extra):
    return ["embed", str(photos), "--out", str(out), "--model", str(model_dir), "--shard-size", "5",
            "--batch-size", "2", "--no-cache", *extra]


def run_cli(args, launcher=(), timeout=300):
    command = [sys.executable, *launcher, "-m", "miniclip", *args] if launcher else [sys.executable, "-m", "miniclip", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


@pytest.fixture(scope="module")
def one_process(photos, tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "embeds"
    run_cli(embed_command(photos, out, tiny_dir, "--workers", "2"))
    return out


def test_rows_are_the_model_on_each_image(one_process, photos, tiny_dir):
    """Every row is the model's embedding of its image alone, in the folder's sorted order."""
    collection = Collection(one_process)
    paths = cli.image_files([photos])
    assert collection.all_sources() == [str(p) for p in paths]
    model, preprocess = load(str(tiny_dir))
    with torch.no_grad():
        expected = torch.cat([model.encode_image(preprocess(p)[None]) for p in paths])
    rows = collection.all_rows()
    assert rows.shape == expected.shape
    torch.testing.assert_close(rows, expected, atol=1e-5, rtol=1e-5)
    manifest = json.loads((one_process / "manifest.json").read_text())
    assert manifest["complete"] and [s["rows"] for s in manifest["shards"]] == [5, 5, 5, 5, 3]
    assert manifest["dim"] == model.config.embed_dim and manifest["shard_dtype"] == "float32"


def test_two_torchrun_processes_equal_one(one_process, photos, tiny_dir, tmp_path):
    """torchrun --nproc_per_node 2: each rank writes its own shards; the union equals the 1-process run."""
    out = tmp_path / "two"
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    done = run_cli(embed_command(photos, out, tiny_dir, "--workers", "1"), launcher=torchrun)
    one, two = Collection(one_process), Collection(out)
    assert two.all_sources() == one.all_sources()
    assert two.manifest["shards"] == one.manifest["shards"]
    a, b = one.all_rows(), two.all_rows()
    assert torch.equal(a, b), f"largest difference {(a - b).abs().max().item():.3g}"
    assert done.stderr.count("wrote 23 embeddings") == 1  # the first process reports; the other is quiet


def test_sigkill_then_rerun_computes_only_missing_shards(one_process, photos, tiny_dir, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, str(WORKER), "slow", *embed_command(photos, out, tiny_dir, "--workers", "0")]
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(out.glob("shard-*.safetensors"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.safetensors")}
    assert 2 <= len(done_before) < 5, f"the kill came too late or too early: {sorted(done_before)}"
    # A crash mid-write leaves a cut-short file at worst; make one under a missing shard's name.
    missing = sorted({layout.shard_name(i) for i in range(5)} - set(done_before))
    whole = (one_process / missing[0]).read_bytes()
    (out / missing[0]).write_bytes(whole[: len(whole) - 7])
    assert not json.loads((out / "manifest.json").read_text())["complete"]

    rerun = run_cli(embed_command(photos, out, tiny_dir, "--workers", "0"))
    assert f"{len(missing)} shards computed now, {len(done_before)} already there" in rerun.stderr
    for name, mtime in done_before.items():  # untouched
        assert (out / name).stat().st_mtime_ns == mtime
    one, resumed = Collection(one_process), Collection(out)
    assert resumed.all_sources() == one.all_sources()
    assert torch.equal(resumed.all_rows(), one.all_rows())
    assert not list(out.glob(".*tmp*")), "a temporary file was left behind"


def test_rerun_with_other_inputs_is_refused(one_process, tmp_path, tiny_dir):
    other = tmp_path / "other"
    make_image(other / "a.png")
    done = subprocess.run([sys.executable, "-m", "miniclip", *embed_command(other, one_process, tiny_dir)],
                          capture_output=True, text=True, env=ENV)
    assert done.returncode == 1 and "holds embeddings of other inputs" in done.stderr, done.stderr


def test_file_list_and_fp16(one_process, photos, tiny_dir, tmp_path):
    """A .txt list of paths (relative to the list) gives the rows of those files; fp16 rounds them."""
    paths = cli.image_files([photos])[::-1][:7]
    listing = tmp_path / "list.txt"
    listing.write_text("# some images\n" + "\n".join(os.path.relpath(p, tmp_path) for p in paths) + "\n\n")
    assert read_file_list(listing) == [tmp_path / os.path.relpath(p, tmp_path) for p in paths]
    out = tmp_path / "half"
    run_cli(["embed", str(listing), "--out", str(out), "--model", str(tiny_dir), "--shard-size", "5",
             "--batch-size", "2", "--shard-dtype", "float16", "--workers", "0"])
    one = Collection(one_process)
    by_source = dict(zip(one.all_sources(), one.all_rows()))
    half = Collection(out)
    expected = torch.stack([by_source[str(p)] for p in paths])
    assert [Path(s).resolve() for s in half.all_sources()] == [p.resolve() for p in paths]
    torch.testing.assert_close(half.all_rows(), expected.half().float(), atol=2e-3, rtol=2e-3)


def test_embed_memory_stays_within_budget(tmp_path):
    """Embeddings 4x the budget (256 images x 65,536 numbers x 4 bytes = 64 MB, budget 16 MB): the process
    holds one shard at a time, so its peak RSS grows by less than the budget."""
    images = tmp_path / "images"
    for i in range(256):
        make_image(images / f"{i:03d}.png", size=(8, 8), seed=i)
    done = subprocess.run([sys.executable, str(WORKER), "embed-memory", str(tmp_path / "out"), "256", "65536", "8",
                           "16", str(images)], capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    growth = int(done.stdout.split()[-1])
    total = 256 * 65536 * 4
    assert total == 4 * (16 << 20)
    rows = Collection(tmp_path / "out").rows
    assert rows == 256
    assert growth < 16 << 20, f"peak RSS grew by {growth / 2**20:.1f} MB, budget 16 MB"


def test_webdataset_tar_shards(photos, tiny_dir, tmp_path):
    """`embed 'shards/{0..2}.tar'`: one output shard per tar, rows in tar order, each the model on its image;
    a rerun finds all three done. Sample 1 of tar 2 has no image: --skip-errors leaves it out and names it."""
    pytest.importorskip("webdataset")
    import io
    import tarfile

    paths = cli.image_files([photos])[:8]
    groups = [paths[0:3], paths[3:8], []]  # an empty tar is an empty shard
    for t, group in enumerate(groups):
        with tarfile.open(tmp_path / f"{t}.tar", "w") as tar:
            members = [(f"s{t}_{i}.{p.suffix[1:]}", p.read_bytes()) for i, p in enumerate(group)]
            if t == 1:
                members.insert(1, ("s1_x.txt", b"a caption without an image"))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    args = ["embed", str(tmp_path / "{0..2}.tar"), "--out", str(out), "--model", str(tiny_dir), "--batch-size", "2",
            "--workers", "2", "--skip-errors"]
    done = subprocess.run([sys.executable, "-m", "miniclip", *args], capture_output=True, text=True, env=ENV)
    assert done.returncode == 1 and "s1_x" in done.stderr and "no image in the sample" in done.stderr, done.stderr
    collection = Collection(out)
    assert collection.counts == [3, 5, 0]
    assert collection.all_sources() == [f"{tmp_path / f'{t}.tar'}#s{t}_{i}" for t, g in enumerate(groups)
                                        for i in range(len(g))]
    model, preprocess = load(str(tiny_dir))
    with torch.no_grad():
        expected = torch.cat([model.encode_image(preprocess(p)[None]) for p in paths])
    torch.testing.assert_close(collection.all_rows(), expected, atol=1e-5, rtol=1e-5)
    again = subprocess.run([sys.executable, "-m", "miniclip", *args], capture_output=True, text=True, env=ENV)
    assert "0 shards computed now, 3 already there" in again.stderr, again.stderr


def test_an_unreadable_image_stops_the_run_naming_it(tmp_path, tiny_dir):
    """Without --skip-errors the first unreadable file stops the run, named; shards finished before it stay."""
    folder = tmp_path / "images"
    for i in range(6):
        make_image(folder / f"{i}.png", seed=i)
    (folder / "4.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    args = ["embed", str(folder), "--out", str(out), "--model", str(tiny_dir), "--shard-size", "2", "--workers", "0",
            "--batch-size", "2"]
    done = subprocess.run([sys.executable, "-m", "miniclip", *args], capture_output=True, text=True, env=ENV)
    assert done.returncode == 1 and str(folder / "4.png") in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr  # one line, no traceback
    assert sorted(p.name for p in out.glob("shard-*")) == [layout.shard_name(0), layout.shard_name(1)]


def test_sharding_options_with_a_single_file_are_refused(tmp_path, tiny_dir, capsys):
    """--shard-size, --shard-dtype and --workers mean nothing for one .safetensors file: refused, not ignored."""
    from miniclip.cli import main

    make_image(tmp_path / "a.png")
    out = tmp_path / "a.safetensors"
    assert main(["embed", str(tmp_path / "a.png"), "--out", str(out), "--model", str(tiny_dir),
                 "--shard-dtype", "float16", "--workers", "0"]) == 1
    assert "--shard-dtype, --workers apply to sharded output" in capsys.readouterr().err
    assert not out.exists()
