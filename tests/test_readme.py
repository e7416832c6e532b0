"""README's command-line quickstart is true: every `miniclip ...` line of it runs, on local test checkpoints.

The commands run as written, in a folder holding the files they name (cat.jpg, photos/, labels.txt, ...).
Only `--model` is added, pointing at the tiny test checkpoint; `convert`'s Hub id resolves from a Hugging
Face cache the tests build (conftest.py), as it would from the real one. `export`'s source is the tiny
checkpoint too: tracing and writing the ViT-B/32-sized one takes 36 s here, and the export code is the same
for every size (tests/test_export.py checks the graphs against onnxruntime).
"""

import re
import shlex
from pathlib import Path

import pytest
from test_cli import make_image

from miniclip.cli import main

README = Path(__file__).parent.parent / "README.md"


def quickstart_lines() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quickstart on the command line", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.startswith("miniclip ")]


def test_the_quickstart_has_a_line_per_command():
    commands = {shlex.split(line)[1] for line in quickstart_lines()}
    assert commands == {"classify", "embed", "search", "similarity", "relevance", "convert", "export"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    for i, name in enumerate(["cat.jpg", "dog.jpg", "query.jpg", "photos/beach.jpg", "photos/park.png"]):
        make_image(folder / name, (64 + 8 * i, 48), seed=i)
    (folder / "labels.txt").write_text("cat\ndog\na red car\n")
    return folder


@pytest.mark.parametrize("line", quickstart_lines())
def test_readme_command_runs(line, workdir, tiny_dir, hub_cache, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("XDG_CACHE_HOME", str(workdir / "cache"))
    argv = shlex.split(line, comments=True)[1:]
    if argv[0] == "export":
        argv[1] = str(tiny_dir)
    elif argv[0] != "convert":
        argv += ["--model", str(tiny_dir)]
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 0, f"{line}\n{err}"
