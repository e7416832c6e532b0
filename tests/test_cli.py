"""The `miniclip` command: a table of invocations (exit status, the one-line message, the output), the embedding
cache's staleness rules, interruption, and the things only a real process shows (entry point, lazy --help).

Most cases run `miniclip.cli.main(argv)` in this process (a subprocess per case would spend ~3 s importing
torch each time); the ones about processes (SIGINT, imports, the installed script) run in subprocesses.
"""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import miniclip
from miniclip.cli import main

LONG_TEXT = " ".join(f"word{i}" for i in range(80))  # > 77 tokens


def make_image(path: Path, size=(48, 40), seed: int = 0, fmt=None) -> Path:
    """A smooth random RGB image (a coarse noise grid, upsampled); the format from the suffix unless given."""
    g = torch.Generator().manual_seed(seed)
    coarse = (torch.rand(4, 5, 3, generator=g) * 255).to(torch.uint8)
    image = Image.frombytes("RGB", (5, 4), bytes(coarse.flatten().tolist())).resize(size, Image.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_dir):
    """The paths the table's {placeholders} stand for."""
    root = tmp_path_factory.mktemp("cli")
    photos = root / "photos"
    for i, size in enumerate([(64, 48), (40, 90), (33, 33), (120, 60)]):
        make_image(photos / f"photo{i}.{'png' if i % 2 else 'jpg'}", size, seed=i)
    mixed = root / "mixed"
    make_image(mixed / "a.jpg", seed=5)
    (mixed / "b_broken.jpg").write_bytes(b"this is not a JPEG")
    make_image(mixed / "c.png", seed=6)
    (root / "empty").mkdir()
    (root / "labels.txt").write_text("cat\n\n  dog  \na red car\n", encoding="utf-8")
    (root / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    return dict(photo=photos / "photo0.jpg", photo1=photos / "photo1.png", photos=photos, mixed=mixed,
                bad=mixed / "b_broken.jpg", empty=root / "empty", missing=root / "missing.jpg",
                missing_dir=root / "nowhere", labels=root / "labels.txt", latin1=root / "latin1.txt",
                unwritable=root / "labels.txt" / "cache", tiny=tiny_dir, long=LONG_TEXT)


@dataclass
class Run:
    status: int
    out: str
    err: str
    tmp: Path = field(default=None)

    @property
    def error_line(self) -> str:
        lines = self.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("miniclip: error: "), f"not one error line:\n{self.err}"
        return lines[0]


def fill(text: str, where: dict) -> str:
    """{name} -> where[name] for the names in `where`; other braces (templates' "{}", "{x}") are left alone."""
    return re.sub(r"\{(\w+)\}", lambda m: str(where.get(m.group(1), m.group(0))), text)


def run(argv, capsys, stdin: str | None = None, monkeypatch=None) -> Run:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        status = main([str(a) for a in argv])
    except SystemExit as e:  # argparse: --help, --version, usage errors
        status = e.code
    captured = capsys.readouterr()
    return Run(status, captured.out, captured.err)


def classify_rows(out: str) -> dict[str, dict[str, float]]:
    """The text output of classify as {image: {label: probability}}."""
    rows, current = {}, None
    for line in out.splitlines():
        if line.startswith("  "):
            p, label = line.split(maxsplit=1)
            rows[current][label] = float(p)
        else:
            current = line
            rows[current] = {}
    return rows


def expected_probs(tiny_dir, images, labels, templates=("a photo of a {}.",)):
    model, preprocess = miniclip.load(tiny_dir)
    classifier = miniclip.zero_shot_classifier(model, labels, templates)
    with torch.no_grad():
        return classifier(model.encode_image(preprocess(images)))


# --- checks on a Run (each returns nothing and asserts) ---

def labels_are(*labels):
    def check(r, f):
        rows = classify_rows(r.out)
        assert rows and all(list(sorted(row)) == sorted(labels) for row in rows.values()), r.out
        for row in rows.values():
            assert abs(sum(row.values()) - 1) < 2e-4 * len(labels)
    return check


def probabilities_match(labels, templates=("a photo of a {}.",)):
    def check(r, f):
        expected = expected_probs(f["tiny"], [f["photo"]], labels, templates)[0]
        got = classify_rows(r.out)[str(f["photo"])]
        assert [got[label] for label in labels] == pytest.approx(expected.tolist(), abs=1e-4)
    return check


def lines(n):
    def check(r, f):
        assert len(r.out.strip().splitlines()) == n, r.out
    return check


def json_lines(n, key, count):
    def check(r, f):
        objects = [json.loads(line) for line in r.out.strip().splitlines()]
        assert len(objects) == n and all(len(o[key]) == count for o in objects), r.out
    return check


def out_has(*words):
    def check(r, f):
        for w in words:
            assert fill(w, f) in r.out, r.out
    return check


def err_has(*words):
    def check(r, f):
        for w in words:
            assert fill(w, f) in r.err, r.err
    return check


def embeddings_rows(n):
    def check(r, f):
        from safetensors.torch import load_file

        assert load_file(r.tmp / "out.safetensors")["embeddings"].shape[0] == n
    return check


def search_top_is(name):
    def check(r, f):
        score, path = r.out.splitlines()[0].split()
        assert path.endswith(name) and abs(float(score) - 1) < 1e-4, r.out
    return check


def file_written(name):
    def check(r, f):
        assert (r.tmp / name).stat().st_size > 0
    return check


M = ["--model", "{tiny}"]
CAT_DOG = ["--label", "cat", "--label", "dog"]
# (id, argv, stdin, exit status, words of the one error line (None: no error expected), extra checks)
CASES = [
    # classify: repeated options extend, labels from files and stdin, at least two distinct labels
    ("classify-repeated-label", ["classify", "{photo}", *CAT_DOG, *M], None, 0, None,
     [labels_are("cat", "dog"), probabilities_match(["cat", "dog"])]),
    ("classify-label-groups", ["classify", "{photo}", "--label", "cat", "dog", "--label", "a red car", *M], None, 0,
     None, [labels_are("cat", "dog", "a red car")]),
    ("classify-one-label", ["classify", "{photo}", "--label", "cat", *M], None, 1,
     ["at least two labels", "similarity"], []),
    ("classify-duplicate-label", ["classify", "{photo}", "--label", "cat", "dog", "cat", *M], None, 1,
     ["'cat'", "twice"], []),
    ("classify-labels-file", ["classify", "{photo}", "--labels-file", "{labels}", *M], None, 0, None,
     [labels_are("cat", "dog", "a red car")]),
    ("classify-labels-stdin", ["classify", "{photo}", "--labels-file", "-", *M], "cat\ndog\n", 0, None,
     [labels_are("cat", "dog")]),
    ("classify-labels-and-file", ["classify", "{photo}", "--label", "bird", "--labels-file", "{labels}", *M], None, 0,
     None, [labels_are("bird", "cat", "dog", "a red car")]),
    ("classify-labels-file-missing", ["classify", "{photo}", "--labels-file", "{missing}", *M], None, 1,
     ["no such labels file", "missing.jpg"], []),
    ("classify-labels-file-not-utf8", ["classify", "{photo}", "--labels-file", "{latin1}", *M], None, 1,
     ["latin1.txt", "not UTF-8"], []),
    ("classify-templates-extend", ["classify", "{photo}", *CAT_DOG, "--template", "a {}.", "--template", "an {} image",
                                   *M], None, 0, None, [probabilities_match(["cat", "dog"], ["a {}.", "an {} image"])]),
    ("classify-template-no-slot", ["classify", "{photo}", *CAT_DOG, "--template", "a photo", *M], None, 1,
     ["'a photo'"], []),
    ("classify-template-named-field", ["classify", "{photo}", *CAT_DOG, "--template", "a {} of {x}", *M], None, 1,
     ["'a {} of {x}'"], []),
    ("classify-top-k", ["classify", "{photo}", "--label", "cat", "dog", "car", "-k", "1", *M], None, 0, None,
     [lines(2)]),
    ("classify-json", ["classify", "{photos}", *CAT_DOG, "--json", "--top-k", "2", *M], None, 0, None,
     [json_lines(4, "labels", 2)]),
    ("classify-folder", ["classify", "{photos}", *CAT_DOG, *M], None, 0, None, [lines(4 * 3)]),
    ("classify-empty-folder", ["classify", "{empty}", *CAT_DOG, *M], None, 1, ["no image files", "empty"], []),
    ("classify-missing-file", ["classify", "{missing}", *CAT_DOG, *M], None, 1, ["no such file", "missing.jpg"], []),
    ("classify-unreadable", ["classify", "{bad}", *CAT_DOG, *M], None, 1, ["cannot read", "b_broken.jpg"], []),
    ("classify-unreadable-in-folder", ["classify", "{mixed}", *CAT_DOG, *M], None, 1, ["b_broken.jpg"], []),
    ("classify-skip-errors", ["classify", "{mixed}", *CAT_DOG, "--skip-errors", *M], None, 1, ..., 
     [lines(2 * 3), err_has("skipped {bad}", "1 unreadable")]),
    ("classify-too-long-label", ["classify", "{photo}", "--label", "{long}", "dog", *M], None, 1,
     ["--truncate", "tokens long"], []),
    ("classify-truncate", ["classify", "{photo}", "--label", "{long}", "dog", "--truncate", *M], None, 0, None,
     [lines(3)]),
    ("classify-no-cuda", ["classify", "{photo}", *CAT_DOG, "--device", "cuda", *M], None, 1, ["no cuda device"], []),
    ("classify-bad-device", ["classify", "{photo}", *CAT_DOG, "--device", "gpu0", *M], None, 1, ["'gpu0'"], []),
    ("classify-bfloat16", ["classify", "{photo}", *CAT_DOG, "--dtype", "bfloat16", *M], None, 0, None,
     [labels_are("cat", "dog")]),
    ("classify-preset-typo", ["classify", "{photo}", *CAT_DOG, "--model", "ViT-B/33"], None, 1,
     ["did you mean", "ViT-B/32"], []),
    ("classify-unknown-hub-id", ["classify", "{photo}", *CAT_DOG, "--model", "someone/no-such-model"], None, 1,
     ["someone/no-such-model", "HF_HUB_OFFLINE"], []),
    ("classify-missing-model-dir", ["classify", "{photo}", *CAT_DOG, "--model", "{missing_dir}/ckpt"], None, 1,
     ["no checkpoint file or folder"], []),
    ("classify-batch-size-0", ["classify", "{photo}", *CAT_DOG, "--batch-size", "0", *M], None, 2, ..., 
     [err_has("must be at least 1")]),
    ("classify-no-label", ["classify", "{photo}", *M], None, 1, ["at least two labels"], []),
    # embed
    ("embed-folder", ["embed", "{photos}", "--out", "{tmp}/out.safetensors", *M], None, 0, None, [embeddings_rows(4)]),
    ("embed-texts", ["embed", "--text", "a cat", "a dog", "--out", "{tmp}/out.safetensors", *M], None, 0, None,
     [embeddings_rows(2)]),
    ("embed-texts-file", ["embed", "--texts-file", "{labels}", "--out", "{tmp}/out.safetensors", *M], None, 0, None,
     [embeddings_rows(3)]),
    ("embed-texts-stdin", ["embed", "--texts-file", "-", "--out", "{tmp}/out.safetensors", *M], "a\nb\nc\nd\n", 0,
     None, [embeddings_rows(4)]),
    ("embed-empty-folder", ["embed", "{empty}", "--out", "{tmp}/out.safetensors", *M], None, 1, ["no image files"], []),
    ("embed-nothing", ["embed", "--out", "{tmp}/out.safetensors", *M], None, 1, ["no images to embed"], []),
    ("embed-unreadable", ["embed", "{mixed}", "--out", "{tmp}/out.safetensors", *M], None, 1, ["b_broken.jpg"], []),
    ("embed-skip-errors", ["embed", "{mixed}", "--out", "{tmp}/out.safetensors", "--skip-errors", *M], None, 1, ...,
     [embeddings_rows(2), err_has("skipped {bad}")]),
    ("embed-cache-not-writable", ["embed", "{photos}", "--out", "{tmp}/out.safetensors", "--cache-dir", "{unwritable}",
                                  *M], None, 1, ["cannot write the embedding cache", "--no-cache"], []),
    ("embed-no-cache", ["embed", "{photos}", "--out", "{tmp}/out.safetensors", "--cache-dir", "{unwritable}",
                        "--no-cache", *M], None, 0, None, [embeddings_rows(4)]),
    ("embed-too-long-text", ["embed", "--text", "{long}", "--out", "{tmp}/out.safetensors", *M], None, 1,
     ["--truncate"], []),
    ("embed-out-needed", ["embed", "{photos}", *M], None, 2, ..., [err_has("--out")]),
    # search
    ("search-path-as-text", ["search", "{photos}", "{photo}", *M], None, 1, ["names a file", "--image"], []),
    ("search-image", ["search", "{photos}", "{photo}", "--image", "-k", "2", *M], None, 0, None,
     [lines(2), search_top_is("photo0.jpg")]),
    ("search-text-json", ["search", "{photos}", "a cat", "--json", "--top-k", "3", *M], None, 0, None,
     [json_lines(1, "results", 3)]),
    ("search-default-k", ["search", "{photos}", "a cat", *M], None, 0, None, [lines(4)]),
    ("search-missing-folder", ["search", "{missing_dir}", "a cat", *M], None, 1, ["no such folder"], []),
    ("search-empty-folder", ["search", "{empty}", "a cat", *M], None, 1, ["no image files"], []),
    ("search-missing-query-image", ["search", "{photos}", "{missing}", "--image", *M], None, 1, ["missing.jpg"], []),
    # similarity
    ("similarity-extend", ["similarity", "--image", "{photo}", "--image", "{photo1}", "--text", "cat", "--text", "dog",
                           *M], None, 0, None, [lines(1 + 2 + 2)]),
    ("similarity-json", ["similarity", "--image", "{photos}", "--text", "cat", "--json", *M], None, 0, None,
     [json_lines(4, "similarities", 1)]),
    ("similarity-empty-folder", ["similarity", "--image", "{empty}", "--text", "cat", *M], None, 1, ["no image files"],
     []),
    ("similarity-no-text", ["similarity", "--image", "{photo}", *M], None, 1, ["needs texts"], []),
    ("similarity-plot-bad-suffix", ["similarity", "--image", "{photo}", "--text", "cat", "--plot", "{tmp}/m.xyz", *M],
     None, 1, ["m.xyz"], []),
    ("similarity-plot-svg", ["similarity", "--image", "{photo}", "--text", "cat", "--plot", "{tmp}/m.svg", *M], None, 0,
     None, [file_written("m.svg")]),
    # relevance
    ("relevance", ["relevance", "{photo}", "a cat", "--out", "{tmp}/r.png", *M], None, 0, None, [file_written("r.png")]),
    ("relevance-too-long-text", ["relevance", "{photo}", "{long}", "--out", "{tmp}/r.png", *M], None, 1,
     ["--truncate"], []),
    ("relevance-bad-suffix", ["relevance", "{photo}", "a cat", "--out", "{tmp}/r.xyz", *M], None, 1, ["r.xyz"], []),
    ("relevance-missing-image", ["relevance", "{missing}", "a cat", "--out", "{tmp}/r.png", *M], None, 1,
     ["missing.jpg"], []),
    # the rest
    ("convert-missing", ["convert", "{missing_dir}/ckpt", "{tmp}/x.pt", "--to", "openai"], None, 1,
     ["no checkpoint"], []),
    ("unknown-command", ["frobnicate"], None, 2, ..., [err_has("invalid choice")]),
    ("version", ["--version"], None, 0, None, [out_has("miniclip 0.")]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cli(case, files, capsys, monkeypatch, tmp_path):
    name, argv, stdin, status, error_words, checks = case
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # every case starts with an empty cache
    where = dict(files, tmp=tmp_path)
    r = run([fill(a, where) for a in argv], capsys, stdin, monkeypatch)
    r.tmp = tmp_path
    assert r.status == status, f"exit status {r.status}, expected {status}\nstdout:\n{r.out}\nstderr:\n{r.err}"
    if error_words is None:
        assert "error" not in r.err, r.err
    elif error_words is not ...:  # ...: an error, but not (only) a one-liner (usage errors, skipped files)
        for w in error_words:
            assert w in r.error_line, r.error_line
    for check in checks:
        check(r, where)


def test_the_table_covers_enough_cases():
    assert len(CASES) >= 40


def test_debug_shows_the_exception(files, capsys):
    with pytest.raises(miniclip.ImageNotFoundError):
        main(["classify", str(files["missing"]), "--label", "cat", "dog", "--debug"])


# -----------------------------------------------------------------------------
# The embedding cache: a cached answer must always be the answer a fresh run gives


def embed_run(capsys, folder, out, model, *extra) -> tuple[torch.Tensor, str]:
    from safetensors.torch import load_file

    r = run(["embed", folder, "--out", out, "--model", model, *extra], capsys)
    assert r.status == 0, r.err
    return load_file(out)["embeddings"], r.err


def cached_count(err: str) -> int:
    return int(re.search(r"(\d+) from the cache", err).group(1))


def same(a, b) -> bool:
    """Equal up to float32 rounding: a cached row was computed in another batch than a fresh run's, and a
    matrix product's rounding can depend on the batch size. A stale embedding is off by far more."""
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_cache_is_never_stale(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder, model = tmp_path / "photos", tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    for i in range(3):  # BMP: same dimensions, same file size, whatever the pixels
        make_image(folder / f"{i}.bmp", (32, 32), seed=i)

    def fresh(*extra):
        return embed_run(capsys, folder, tmp_path / "fresh.safetensors", model, "--no-cache", *extra)[0]

    first, err = embed_run(capsys, folder, tmp_path / "a.safetensors", model)
    assert cached_count(err) == 0
    again, err = embed_run(capsys, folder, tmp_path / "a.safetensors", model)
    assert cached_count(err) == 3 and torch.equal(again, first)

    # 1. an image replaced by another of the same size, its mtime restored
    target = folder / "1.bmp"
    before = target.stat()
    make_image(tmp_path / "other.bmp", (32, 32), seed=42)
    shutil.copyfile(tmp_path / "other.bmp", target)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_size == before.st_size and target.stat().st_mtime_ns == before.st_mtime_ns
    now, err = embed_run(capsys, folder, tmp_path / "a.safetensors", model)
    assert cached_count(err) == 2 and same(now, fresh()) and not same(now[1], first[1])
    # and search, which shares the cache, ranks with the new picture: it is its own nearest neighbour
    r = run(["search", folder, target, "--image", "-k", "1", "--model", model], capsys)
    assert r.status == 0 and r.out.split()[1] == str(target) and abs(float(r.out.split()[0]) - 1) < 1e-5

    # 2. the weights file rewritten in place (same path, same size)
    from safetensors.torch import load_file, save_file

    weights = load_file(model / "model.safetensors")
    weights = {k: v * 1.5 if k.endswith("proj.weight") and v.is_floating_point() else v for k, v in weights.items()}
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    now, err = embed_run(capsys, folder, tmp_path / "a.safetensors", model)
    assert cached_count(err) == 0 and same(now, fresh()) and not same(now, first)

    # 3. another dtype is another cache
    now, err = embed_run(capsys, folder, tmp_path / "a.safetensors", model, "--dtype", "bfloat16")
    assert cached_count(err) == 0 and same(now, fresh("--dtype", "bfloat16"))

    # 4. the model path spelled three ways is one model
    base, _ = embed_run(capsys, folder, tmp_path / "a.safetensors", model)
    for spelling in (f"{model}/", "model"):
        monkeypatch.chdir(tmp_path)
        now, err = embed_run(capsys, folder, tmp_path / "a.safetensors", spelling)
        assert cached_count(err) == 3 and torch.equal(now, base), spelling


def test_output_files_keep_the_umask(tiny_dir, files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    old = os.umask(0o027)
    try:
        embed_run(capsys, files["photos"], tmp_path / "e.safetensors", tiny_dir)
    finally:
        os.umask(old)
    assert (tmp_path / "e.safetensors").stat().st_mode & 0o777 == 0o640
    shards = list((tmp_path / "cache").rglob("shard-*.safetensors"))
    assert shards and all(s.stat().st_mode & 0o777 == 0o640 for s in shards)
    assert not list(files["photos"].glob(".*")), "nothing is written into the user's photo folder"


# -----------------------------------------------------------------------------
# Real processes


def cli_process(*args, cache: Path, **kwargs):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(cache), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "miniclip", *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_ctrl_c_keeps_the_work_done(tiny_dir, tmp_path):
    """SIGINT after some batches: the embeddings made are saved; the rerun embeds only the rest and its output
    equals an uninterrupted run bit for bit (same batches: the rerun's start where the saved ones end)."""
    from safetensors.torch import load_file

    folder, cache = tmp_path / "photos", tmp_path / "cache"
    n = 800  # enough for the run to outlast the progress bar's first second, on the tiny model
    for i in range(n):
        make_image(folder / f"{i:04d}.png", (24, 24), seed=i)
    args = ["embed", folder, "--model", tiny_dir, "--batch-size", "2"]

    p = cli_process(*args, "--out", tmp_path / "interrupted.safetensors", cache=cache)
    stderr = []
    reader = threading.Thread(target=lambda: stderr.append(p.stderr.read()))
    progress = re.compile(r"embedding images:\s+\d+%")
    buffer = ""
    while not progress.search(buffer):  # tqdm shows the bar after a second of embedding
        char = p.stderr.read(1)
        assert char, f"the run ended before it was interrupted: {buffer}"
        buffer += char
    p.send_signal(signal.SIGINT)
    reader.start()
    p.wait(timeout=120)
    reader.join()
    err = buffer + "".join(stderr)
    assert p.returncode == 130, err
    saved = int(re.search(r"(\d+) new embeddings were saved in the cache", err).group(1))
    assert 0 < saved < n
    assert not (tmp_path / "interrupted.safetensors").exists()

    rerun = cli_process(*args, "--out", tmp_path / "rerun.safetensors", cache=cache)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert f"{n - saved} new or changed images embedded, {saved} from the cache" in err

    whole = cli_process(*args, "--out", tmp_path / "whole.safetensors", "--no-cache", cache=cache)
    _, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err
    a, b = load_file(tmp_path / "rerun.safetensors"), load_file(tmp_path / "whole.safetensors")
    assert torch.equal(a["embeddings"], b["embeddings"])


def test_help_and_version_do_not_import_torch():
    code = ("import sys; from miniclip.cli import main\n"
            "for argv in (['--help'], ['classify', '--help'], ['--version']):\n"
            "    try: main(argv)\n"
            "    except SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "(default: 32)" in result.stdout and "(default: float32)" in result.stdout  # defaults are shown


def test_the_installed_entry_point_runs():
    script = Path(sys.executable).parent / "miniclip"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "classify" in result.stdout


def test_no_numpy_warning(tiny_dir, files, tmp_path):
    p = cli_process("classify", files["photo"], "--label", "cat", "dog", "--model", tiny_dir, cache=tmp_path)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "Warning" not in err, err


def test_cli_convert_round_trip_is_bit_exact(b32_dir, tmp_path, capsys):
    # ViT-B/32 sizes: OpenAI's files carry no config, and its sizes are inferred from shapes (64-wide heads)
    openai_file, back = tmp_path / "clip.pt", tmp_path / "hf"
    assert run(["convert", b32_dir, openai_file, "--to", "openai"], capsys).status == 0
    assert run(["convert", openai_file, back, "--to", "transformers"], capsys).status == 0
    from safetensors.torch import load_file

    original = {k: v for k, v in torch.load(b32_dir / "pytorch_model.bin", weights_only=True).items()
                if not k.endswith("position_ids")}
    again = load_file(back / "model.safetensors")
    assert original.keys() == again.keys()
    assert all(torch.equal(original[k], again[k]) for k in original)
    assert torch.load(openai_file, weights_only=True)["visual.proj"].shape == (768, 512)  # OpenAI's (width, embed)


def test_similarity_prints_the_cosines(tiny_dir, files, capsys):
    photos = [files["photo"], files["photo1"]]
    r = run(["similarity", "--image", *photos, "--text", "a cat", "--text", "a dog", "--model", tiny_dir], capsys)
    model, preprocess = miniclip.load(tiny_dir)
    with torch.no_grad():
        sims = F.normalize(model.encode_image(preprocess(photos)), dim=-1) @ \
            F.normalize(model.encode_text(miniclip.tokenize(["a cat", "a dog"])), dim=-1).t()
    printed = torch.tensor([[float(v) for v in row.split()[1:]] for row in r.out.splitlines()[1:3]])
    torch.testing.assert_close(printed, sims, atol=1e-4, rtol=0)  # 4 decimals printed
