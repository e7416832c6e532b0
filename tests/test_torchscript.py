"""Reading weights that torch.load(mmap=True) and torch.jit.load used to read: legacy torch.save files and
TorchScript archives (OpenAI's released .pt files).

- Legacy (non-zip) torch.save files load to the same model as the zip format, bit for bit.
- weights/torchscript.py gives exactly `torch.jit.load(path).state_dict()` (names, order, values, dtypes)
  without loading the archive's code: an archive whose code would not load, or would print, still gives its
  tensors, and prints nothing; a data.pkl that asks for any other global is refused before it runs.

The OpenAI-layout model is OpenAI's own clip/model.py at a tiny size (tests/oracles.py), 64-wide heads so
that its sizes can be inferred from the shapes, as for OpenAI's files.
"""

import io
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from checkpoints import hub_state_dict
from oracles import openai_model_module

import miniclip
from miniclip import CLIP
from miniclip.errors import CheckpointError
from miniclip.weights import torchscript

# OpenAI's CLIP(embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size, context_length,
# vocab_size, transformer_width, transformer_heads, transformer_layers) at a tiny size.
OPENAI_TINY = (16, 32, 2, 64, 8, 77, 49408, 64, 1, 2)
IMAGE_SIZE = 32

pytestmark = [
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # torch 2.9+ deprecates TorchScript itself
]


@pytest.fixture(scope="module")
def openai_tiny():
    """OpenAI's model at a tiny size, every tensor perturbed so that a misplaced one shows."""
    torch.manual_seed(0)
    model = openai_model_module().CLIP(*OPENAI_TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def probe():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g), miniclip.tokenize(["a photo of a cat", "a dog"])


@torch.no_grad()
def embeddings(path):
    model = CLIP.from_pretrained(path)
    pixels, ids = probe()
    return model.encode_image(pixels), model.encode_text(ids)


def assert_bit_exact(ours, theirs, what):
    for name, a, b in zip(("image", "text"), ours, theirs):
        assert torch.equal(a, b), f"{what}: {name} embeddings differ by {(a - b).abs().max().item():.3g}"


# -----------------------------------------------------------------------------
# Legacy (pre-1.6, non-zip) torch.save files


@pytest.mark.parametrize("suffix", [".pt", ".bin"])
def test_legacy_openai_layout_file_loads_like_the_zip_format(openai_tiny, tmp_path, suffix):
    sd = {k: v.detach().clone() for k, v in openai_tiny.state_dict().items()}
    zipped, legacy = tmp_path / f"zip{suffix}", tmp_path / f"legacy{suffix}"
    torch.save(sd, zipped)
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    assert zipfile.is_zipfile(zipped) and not zipfile.is_zipfile(legacy)
    assert_bit_exact(embeddings(legacy), embeddings(zipped), f"legacy {suffix} vs zip {suffix}")


def test_legacy_transformers_layout_bin_loads_like_the_zip_format(tiny_ref, tiny_dir, tmp_path):
    folders = {}
    for kind, zip_format in [("zip", True), ("legacy", False)]:
        folder = folders[kind] = tmp_path / kind
        folder.mkdir()
        shutil.copy(tiny_dir / "config.json", folder / "config.json")
        torch.save(hub_state_dict(tiny_ref), folder / "pytorch_model.bin", _use_new_zipfile_serialization=zip_format)
    assert not zipfile.is_zipfile(folders["legacy"] / "pytorch_model.bin")
    assert_bit_exact(embeddings(folders["legacy"]), embeddings(folders["zip"]), "legacy vs zip pytorch_model.bin")


# -----------------------------------------------------------------------------
# TorchScript archives: exactly torch.jit.load(path).state_dict()


class Block(torch.nn.Module):
    """Every kind of attribute jit's state_dict must include or leave out."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.no_bias = torch.nn.Linear(2, 2, bias=False)  # a None parameter: left out
        self.bn = torch.nn.BatchNorm1d(2)  # buffers, an int64 one among them
        self.register_buffer("scale", torch.full((2,), 3.0))
        self.register_buffer("shift", torch.zeros(2), persistent=False)  # TorchScript keeps it in state_dict
        self.mask = torch.full((2, 2), 5.0)  # a plain tensor attribute (like OpenAI's attn_mask): left out
        self.fp16 = torch.nn.Parameter(torch.randn(4).half())
        self.view = torch.nn.Parameter(torch.randn(2, 3)[:, 1])  # a view: offset and stride into a storage

    def forward(self, x):
        y = self.no_bias(self.bn(self.lin(x))) * self.scale + self.shift + self.mask.sum()
        return y + self.fp16.float().sum() + self.view


class Scripted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.seq = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
        self.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(2)])

    def forward(self, x):
        y = self.seq(self.block(x))
        for layer in self.layers:
            y = layer(y)
        return y


def scripted_archive(folder: Path) -> Path:
    torch.manual_seed(0)
    path = folder / "scripted.pt"
    torch.jit.save(torch.jit.script(Scripted().eval()), str(path))
    return path


def traced_archive(folder: Path, model) -> Path:
    """Like OpenAI's released .pt files: the model traced, code and all."""
    path = folder / "traced.pt"
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(model, probe(), check_trace=False), str(path))
    return path


def assert_same_state_dict(ours: dict, theirs: dict, what: str):
    assert list(ours) == list(theirs), f"{what}: names differ: {sorted(set(ours) ^ set(theirs))}"
    for name, t in theirs.items():
        assert ours[name].dtype == t.dtype, f"{what}: {name} is {ours[name].dtype}, jit's is {t.dtype}"
        assert torch.equal(ours[name], t), f"{what}: {name} differs by {(ours[name] - t).abs().max().item():.3g}"


@pytest.mark.parametrize("kind", ["scripted", "traced"])
def test_tensors_are_exactly_jits_state_dict(kind, openai_tiny, tmp_path):
    path = scripted_archive(tmp_path) if kind == "scripted" else traced_archive(tmp_path, openai_tiny)
    assert torchscript.is_torchscript(path)
    ours = torchscript.read_torchscript(path)
    assert_same_state_dict(ours, torch.jit.load(str(path)).state_dict(), kind)
    if kind == "scripted":
        assert "block.mask" not in ours and "block.no_bias.bias" not in ours and "block.shift" in ours
        assert ours["block.fp16"].dtype == torch.float16 and ours["block.view"].stride() == (3,)
    else:
        assert "transformer.resblocks.0.attn.in_proj_weight" in ours


# -----------------------------------------------------------------------------
# The code is never loaded: an archive whose code would fail or print still gives its tensors


def rewrite_code(src: Path, dst: Path, change) -> Path:
    """A copy of the archive with every code/**.py file passed through `change` (text -> text)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if "/code/" in info.filename and info.filename.endswith(".py"):
                data = change(data.decode()).encode()
            zout.writestr(info.filename, data)
    return dst


TAMPERINGS = {
    "print-at-top": lambda code: 'print("PWNED")\n' + code,
    "syntax-error": lambda code: code + "\ndef (:\n",
    "raise-in-class-body": lambda code: code.replace("  __buffers__", '  raise RuntimeError("PWNED")\n  __buffers__'),
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_code_that_would_fail_or_print_is_never_loaded(tampering, openai_tiny, tmp_path, capfd):
    original = traced_archive(tmp_path, openai_tiny)
    # The same rewriting without a change loads in torch.jit.load: what breaks it below is the code alone.
    torch.jit.load(str(rewrite_code(original, tmp_path / "copy.pt", lambda code: code)))
    tampered = rewrite_code(original, tmp_path / "tampered.pt", TAMPERINGS[tampering])
    capfd.readouterr()
    try:
        torch.jit.load(str(tampered))
        jit_failed = False
    except Exception:  # noqa: BLE001 - what torch.jit.load raises is its business; that it fails is the point
        jit_failed = True
    assert jit_failed or "PWNED" in capfd.readouterr().out, "the tampering should break torch.jit.load"

    capfd.readouterr()
    ours = torchscript.read_torchscript(tampered)
    assert_same_state_dict(ours, torch.jit.load(str(original)).state_dict(), f"{tampering} archive")
    assert_bit_exact(embeddings(tampered), embeddings(original), f"{tampering} archive vs the original")
    out = capfd.readouterr()
    assert "PWNED" not in out.out + out.err


# -----------------------------------------------------------------------------
# A data.pkl that asks for anything but tensors and modules is refused before it runs


def opcodes(value) -> bytes:
    """The pickle opcodes that push `value`, without PROTO and STOP."""
    return pickle.dumps(value, protocol=2)[2:-1]


def call_pickle(module: str, name: str, argument) -> bytes:
    """`module.name(argument)` as pickle opcodes, by hand: PROTO 2, GLOBAL, the argument, TUPLE1, REDUCE, STOP."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + opcodes(argument) + b"\x85R."


def archive_with(path: Path, data_pkl: bytes) -> Path:
    """A zip laid out like a TorchScript archive, around a hand-written data.pkl."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/code/__torch__.py", "class M(Module):\n  __parameters__ = []\n  __buffers__ = []\n")
        z.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        z.writestr("archive/version", "3\n")
    return path


@pytest.mark.parametrize("module, name, argument", [
    ("os", "system", "touch {victim}"),
    ("builtins", "eval", "__import__('pathlib').Path({victim!r}).touch()"),
    ("builtins", "exec", "open({victim!r}, 'w').close()"),
], ids=["os.system", "builtins.eval", "builtins.exec"])
def test_a_forbidden_global_is_refused_and_nothing_runs(module, name, argument, tmp_path):
    victim = tmp_path / "pwned"
    path = archive_with(tmp_path / "evil.pt", call_pickle(module, name, argument.format(victim=str(victim))))
    # The payload is real (plain pickle would find the function and call it), and the file passes for an archive.
    assert callable(pickle.Unpickler(io.BytesIO()).find_class(module, name))
    assert torchscript.is_torchscript(path)
    with pytest.raises(CheckpointError) as e:
        CLIP.from_pretrained(path)
    message = str(e.value)
    assert "evil.pt" in message and f"{module}.{name}" in message and "refuses to unpickle" in message, message
    assert not victim.exists()


def test_a_pickle_cannot_change_torchs_own_functions(tmp_path):
    """BUILD sets attributes on whatever is on the stack, functions included (even __defaults__): what
    find_class hands out must be a copy, or one file could change how every later file is read."""
    rebuild = torch._utils._rebuild_tensor_v2
    defaults = rebuild.__defaults__
    state = ({"polluted": True}, {"__defaults__": ("polluted",)})  # (its __dict__, attributes to set)
    data_pkl = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n" + opcodes(state) + b"b."  # GLOBAL, state, BUILD
    path = archive_with(tmp_path / "evil.pt", data_pkl)
    with pytest.raises(CheckpointError, match="evil.pt.*not a TorchScript module"):
        torchscript.read_torchscript(path)
    assert rebuild.__defaults__ == defaults and "polluted" not in rebuild.__dict__
