"""Model names: presets in every spelling, near misses refused without the network, and the Hub when it
cannot be reached (or can: a local server stands in for it).

Nothing here needs the internet. The Hub is replaced by local sockets: a port nobody listens on (the
connection is refused), a server that accepts and never answers (the timeout path), and a small HTTP server
that answers as the Hub's `resolve` endpoint does. Those tests run in subprocesses with HF_HUB_OFFLINE
unset, because conftest.py sets it for this process and huggingface_hub reads it once, at import.
"""

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import ClassVar

import pytest
from checkpoints import TINY, reference_model, write_checkpoint, write_hub_cache
from conftest import HUB_COMMIT, HUB_REPO
from miniclip.weights.hub import resolve

from miniclip import CLIP
from miniclip.config import HUB_IDS, find_preset, suggest_preset
from miniclip.errors import CheckpointNotFoundError, InputTypeError
from miniclip.pretrained import find_preprocessor_config

# The acceptance bound of issue 17: a Hub that cannot be reached is reported within 5 s.
FAIL_FAST_SECONDS = 5.0


# -----------------------------------------------------------------------------
# Spellings


@pytest.mark.parametrize("name,preset", [
    ("ViT-B/32", "ViT-B/32"), ("vit-b/32", "ViT-B/32"), ("ViT-B-32", "ViT-B/32"), ("VIT-B-32", "ViT-B/32"),
    (" ViT-B/32 ", "ViT-B/32"), ("vit-b-16", "ViT-B/16"), ("ViT-L-14", "ViT-L/14"),
    ("ViT-L/14@336px", "ViT-L/14@336px"), ("ViT-L-14-336", "ViT-L/14@336px"), ("vit-l/14@336", "ViT-L/14@336px"),
    ("RN50", "RN50"), ("rn50x4", "RN50x4"), ("RN101", "RN101"),
])
def test_preset_spellings(name, preset):
    assert find_preset(name) == preset


@pytest.mark.parametrize("name", ["ViT-B/33", "VIT-B32", "openai/clip-vit-base-patch32", "RN-50", "", "ViT"])
def test_names_that_are_not_presets(name):
    assert find_preset(name) is None


@pytest.mark.parametrize("name,guess", [
    ("ViT-B/33", "ViT-B/32"), ("vit-b/31", "ViT-B/32"), ("VIT-B32", "ViT-B/32"), ("ViTB/32", "ViT-B/32"),
    ("ViT-L/15", "ViT-L/14"), ("RN-50", "RN50"), ("RN101x", "RN101"),
])
def test_near_misses_are_suggested(name, guess):
    assert suggest_preset(name) == guess


@pytest.mark.parametrize("name", [HUB_REPO, "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "nobody/nothing",
                                  "timm/vit_base_patch32_clip_224.openai", "someone/some-model", "ViT-B-32-quickgelu"])
def test_hub_ids_are_not_near_misses(name):
    assert suggest_preset(name) is None


@pytest.mark.parametrize("name", ["ViT-B/32", "vit-b/32", "ViT-B-32", "vit-b-32"])
def test_every_spelling_loads_the_same_files_and_preprocessor(hub_cache, name):
    canonical = resolve("ViT-B/32", revision=HUB_COMMIT)
    assert resolve(name, revision=HUB_COMMIT) == canonical
    assert find_preprocessor_config(name) == find_preprocessor_config("ViT-B/32") == \
        canonical.folder / "preprocessor_config.json"


# -----------------------------------------------------------------------------
# Near misses: refused with a suggestion, before anything touches the Hub


@pytest.fixture
def no_hub(monkeypatch):
    """Any use of huggingface_hub's network functions fails the test."""
    import huggingface_hub

    def network(*args, **kwargs):
        raise AssertionError(f"the network was used: {args}")

    for name in ("hf_hub_download", "get_session", "get_hf_file_metadata"):
        monkeypatch.setattr(huggingface_hub, name, network)


@pytest.mark.parametrize("name", ["ViT-B/33", "vit-b/31", "VIT-B32"])
def test_near_miss_is_refused_with_a_suggestion(no_hub, name):
    for call in (lambda: CLIP.from_pretrained(name), lambda: find_preprocessor_config(name)):
        with pytest.raises(CheckpointNotFoundError, match=r"did you mean 'ViT-B/32'\?") as e:
            call()
        assert repr(name) in str(e.value) and "\n" not in str(e.value)


def test_near_miss_already_in_the_cache_is_that_repository(tmp_path, tiny_dir, monkeypatch):
    # "me/vit-b-32" is one letter pair from "vit-b-32", but a user who downloaded it gets it.
    from huggingface_hub import constants

    snapshot = write_hub_cache(tmp_path, "me/vit-b-32", tiny_dir, HUB_COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert CLIP.from_pretrained("me/vit-b-32").config.vision.image_size == 32
    assert find_preprocessor_config("me/vit-b-32") == snapshot / "preprocessor_config.json"
    with pytest.raises(CheckpointNotFoundError, match=r"did you mean 'ViT-B/32'\?.*hf download vit/b-33"):
        CLIP.from_pretrained("vit/b-33")  # not in the cache: refused, with how to get it if it was meant


def test_an_existing_local_path_wins_over_any_name(tmp_path, tiny_dir, monkeypatch, no_hub):
    import shutil

    shutil.copytree(tiny_dir, tmp_path / "ViT-B" / "33")  # a folder that happens to look like a near miss
    monkeypatch.chdir(tmp_path)
    assert CLIP.from_pretrained("ViT-B/33").config.vision.image_size == 32
    assert find_preprocessor_config("ViT-B/33") == Path("ViT-B/33/preprocessor_config.json")


def test_resnet_presets_say_where_their_weights_come_from(no_hub):
    with pytest.raises(CheckpointNotFoundError, match=r"'rn50' is OpenAI's RN50.*RN50\.pt"):
        CLIP.from_pretrained("rn50")


def test_a_name_of_the_wrong_type():
    with pytest.raises(InputTypeError, match="name_or_path is a int"):
        CLIP.from_pretrained(32)


# -----------------------------------------------------------------------------
# The Hub out of reach, in subprocesses (HF_HUB_OFFLINE unset)

LOAD = textwrap.dedent("""
    import json, sys, time
    import torch, miniclip.model  # before the clock starts: torch's import is not the Hub's doing
    import miniclip

    start = time.monotonic()
    try:
        model, preprocess = miniclip.load(sys.argv[1])
        result = {"error": None, "image_size": model.config.vision.image_size, "crop_size": preprocess.crop_size}
    except miniclip.MiniclipError as e:
        result = {"error": type(e).__name__, "message": str(e)}
    result["seconds"] = time.monotonic() - start
    print(json.dumps(result))
""")


def run_load(name: str, endpoint: str, cache: Path, offline: bool = False) -> dict:
    """miniclip.load(name) in a fresh process whose Hub is `endpoint` and cache `cache`; what it returned
    or raised, and how long the call took."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    # HF_HOME too: huggingface_hub keeps its token and other files there, out of the user's home.
    env.update(HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(cache), HF_HOME=str(cache / "home"),
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run([sys.executable, "-c", LOAD, name], env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no warnings or retry logs: the error is the one line
    return json.loads(result.stdout)


def closed_port() -> int:
    """A local port nobody listens on: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_server():
    """A local server that accepts connections and never answers (the timeout path). Yields its endpoint
    and the list of connections it accepted."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(32)
    accepted = []

    def accept():
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:  # closed at teardown
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    server.close()
    for connection in accepted:
        connection.close()


def assert_fast_one_line_failure(result: dict, repo_id: str, cause: str, cache: Path):
    assert result["error"] == "CheckpointNotFoundError", result
    message = result["message"]
    assert "\n" not in message
    for words in (repo_id, cause, f"not in the Hugging Face cache ({cache})"):
        assert words in message, message
    assert result["seconds"] < FAIL_FAST_SECONDS, f"took {result['seconds']:.1f} s: {message}"


def test_refused_connection_fails_fast_with_one_line(tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    result = run_load("someone/some-model", endpoint, tmp_path)
    assert_fast_one_line_failure(result, "someone/some-model", f"the Hub at {endpoint} could not be reached",
                                 tmp_path)
    assert "Connection refused" in result["message"] or "ConnectError" in result["message"]


def test_silent_hub_fails_fast_with_one_line(tmp_path, silent_server):
    endpoint, accepted = silent_server
    result = run_load("someone/some-model", endpoint, tmp_path)
    assert_fast_one_line_failure(result, "someone/some-model", "could not be reached (no answer within", tmp_path)
    assert len(accepted) == 1  # one question, no retries


def test_offline_mode_fails_fast_with_one_line(tmp_path):
    result = run_load("someone/some-model", f"http://127.0.0.1:{closed_port()}", tmp_path, offline=True)
    assert_fast_one_line_failure(result, "someone/some-model", "HF_HUB_OFFLINE=1 is set", tmp_path)


def test_near_miss_never_reaches_the_hub(tmp_path, silent_server):
    endpoint, accepted = silent_server
    result = run_load("ViT-B/33", endpoint, tmp_path)
    assert "did you mean 'ViT-B/32'?" in result["message"] and result["seconds"] < 1
    assert accepted == []


def test_cached_model_loads_while_the_hub_is_silent(tmp_path, silent_server, tiny_dir):
    # The cache holds a (tiny) checkpoint under ViT-B/32's Hub id: it loads, preprocessor config included,
    # after one unanswered question to the Hub (remembered for the next two files), not one per file.
    endpoint, accepted = silent_server
    write_hub_cache(tmp_path, HUB_REPO, tiny_dir, HUB_COMMIT, absent=())
    result = run_load("vit-b-32", endpoint, tmp_path)
    assert result["error"] is None, result
    assert result["image_size"] == result["crop_size"] == 32
    assert len(accepted) == 1
    assert result["seconds"] < FAIL_FAST_SECONDS


# -----------------------------------------------------------------------------
# A Hub that answers: downloads go through hf_hub_download as always


class FakeHub(http.server.BaseHTTPRequestHandler):
    """The Hub's `{endpoint}/{repo}/resolve/{revision}/{file}`, as far as hf_hub_download reads it: HEAD and
    GET answer with the commit, the ETag and the length, or 404 with the Hub's error code."""

    files: ClassVar[dict[str, bytes]] = {}  # file name -> contents, set by the test
    commit = "b" * 40

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def answer(self, body: bool):
        parts = self.path.split("?")[0].strip("/").split("/")
        data = self.files.get("/".join(parts[4:])) if len(parts) > 4 and parts[2] == "resolve" else None
        self.send_response(200 if data is not None else 404)
        self.send_header("X-Repo-Commit", self.commit)
        self.send_header("Content-Length", str(len(data or b"")))
        if data is not None:
            self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        else:
            self.send_header("X-Error-Code", "EntryNotFound")
        self.end_headers()
        if body and data:
            self.wfile.write(data)


def test_downloads_from_a_hub_that_answers(tmp_path):
    folder = write_checkpoint(reference_model(TINY, seed=0), tmp_path / "repo", weights=("model.safetensors",))
    FakeHub.files = {p.name: p.read_bytes() for p in folder.iterdir()}
    FakeHub.files["preprocessor_config.json"] = json.dumps({"size": 40, "crop_size": 32}).encode()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cache = tmp_path / "cache"
        result = run_load("someone/tiny", f"http://127.0.0.1:{server.server_port}", cache)
    finally:
        server.shutdown()
    assert result["error"] is None, result
    assert result["image_size"] == result["crop_size"] == 32
    snapshot = cache / "models--someone--tiny" / "snapshots" / FakeHub.commit
    assert {p.name for p in snapshot.iterdir()} == {"config.json", "model.safetensors", "preprocessor_config.json"}


def test_presets_map_to_the_hub_ids():
    assert {name: find_preset(name) for name in HUB_IDS} == {name: name for name in HUB_IDS}
