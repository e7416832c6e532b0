"""Reading the tensors of a TorchScript archive (OpenAI's released .pt files) without loading its code.

`torch.jit.load` deserialises and compiles the Python-like code an archive carries, so an archive's author
chooses what runs at load time. miniclip wants only the weights, so it reads the archive as data:

- `<top>/data.pkl` is a pickle of the module tree: each TorchScript module is a `__torch__.*` class
  instance whose state is a dict of its attributes (parameters, buffers, submodules, plain values).
  It is unpickled by `ArchiveUnpickler`, whose `find_class` allows only tensor rebuilding, storage types,
  dtypes and plain containers, and turns every `__torch__.*` class into an inert `ScriptObject` that only
  records the state it is given. Any other global is refused before anything is built.
- each storage comes from `<top>/data/<key>` in the zip (`persistent_load`), as torch.serialization does.
- which attributes are parameters and buffers is written in the class bodies under `<top>/code/`, one line
  each (`__parameters__ = ["weight", "bias", ]`). Those two lines are read as literals (ast.literal_eval);
  the rest of the code is never parsed, compiled or run, so even code that would not load does not matter.

The result is what `torch.jit.load(path).state_dict()` returns: the same dotted names, in the same order,
parameters and buffers only (a tensor attribute that is neither, such as a cached mask, is left out).

The layout of an archive (torch.jit.save, any torch since 1.6):
    <top>/data.pkl            the module tree (pickle protocol 2)
    <top>/data/0, 1, ...      raw storage bytes, little-endian unless <top>/byteorder says otherwise
    <top>/code/__torch__/...  one .py file per module path, e.g. code/__torch__/torch/nn/modules/linear.py
                              defines __torch__.torch.nn.modules.linear.Linear
    <top>/constants.pkl       tensors the code uses as constants (not part of the state dict)
"""

import ast
import io
import pickle
import re
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
import torch._utils
import torch.jit._pickle

from miniclip.errors import CheckpointError

# The globals a TorchScript data.pkl may name, besides the `__torch__.*` classes, storage types and dtypes
# (see find_class). Each builds a tensor or a plain value from plain arguments, and nothing else.
ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,  # every tensor torch.jit.save writes
    ("collections", "OrderedDict"): OrderedDict,  # a tensor's (empty) backward hooks
    ("torch", "device"): torch.device,
    # Typed lists and dicts of module attributes: each returns its first argument unchanged.
    ("torch.jit._pickle", "restore_type_tag"): torch.jit._pickle.restore_type_tag,
    ("torch.jit._pickle", "build_intlist"): torch.jit._pickle.build_intlist,
    ("torch.jit._pickle", "build_doublelist"): torch.jit._pickle.build_doublelist,
    ("torch.jit._pickle", "build_boollist"): torch.jit._pickle.build_boollist,
    ("torch.jit._pickle", "build_tensorlist"): torch.jit._pickle.build_tensorlist,
}
# The storage types data.pkl names (`torch.FloatStorage`, ...), each read as the dtype of its elements. The
# classes themselves are deprecated, and only their dtype is needed.
STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
}
# torch.float16, ...: looked up in torch's namespace dict, since getattr(torch, name) may import a submodule.
DTYPES = {name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}
SCRIPT_MODULE_PREFIX = "__torch__"
# torch prints each module class as `class Name(Module):` at the start of a line, its parameter and buffer
# names each on one line below it (torch/csrc/jit/serialization/python_print.cpp).
MODULE_CLASS_LINE = re.compile(r"class (\w+)\(Module\):")
MEMBER_LIST_LINE = re.compile(r"\s+(__parameters__|__buffers__) = (\[.*\])")


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip whose one top folder holds `code/` and `constants.pkl`; the zip that
    torch.save writes holds only `data.pkl`, `data/` and `version`."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        inside = [name.split("/", 1)[-1] for name in z.namelist()]
    return any(name == "constants.pkl" or name.startswith("code/") for name in inside)


def read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    """The parameters and buffers of the TorchScript archive at `path`, by dotted name, on the CPU.

    The same names and tensors as `torch.jit.load(path).state_dict()`, without loading the archive's code.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            top = archive_folder(z, path)
            root = ArchiveUnpickler(z, top, path).load()
            members = module_members(z, top, path)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile and pickle raise many types; all mean "unreadable"
        raise CheckpointError(f"{path} looks like a TorchScript archive but its data.pkl cannot be read: "
                              f"{type(e).__name__}: {e}. Re-download or re-save it.") from e
    return module_state_dict(root, members, path)


def archive_folder(z: zipfile.ZipFile, path: Path) -> str:
    """The archive's one top folder (torch.jit.save names it after the file), which holds data.pkl."""
    tops = {name.split("/", 1)[0] for name in z.namelist()}
    if len(tops) != 1 or f"{next(iter(tops))}/data.pkl" not in z.namelist():
        raise CheckpointError(f"{path} is a zip with code/ or constants.pkl but not one top folder holding "
                              f"data.pkl (found {sorted(tops)[:5]}), so it is no TorchScript archive torch 1.6+ wrote")
    return next(iter(tops))


# -----------------------------------------------------------------------------
# data.pkl: the module tree, with inert stand-ins for the archive's classes


class ScriptObject:
    """Stands in for an instance of one of the archive's classes (`__torch__.*`): it only keeps the state
    that the pickle's BUILD gives it. Its class's code, in `code/`, is never looked at."""

    qualified_name = ""  # e.g. "__torch__.torch.nn.modules.linear.Linear", set on each subclass

    def __setstate__(self, state):
        self.state = state


class ArchiveUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript data.pkl into ScriptObjects and tensors, refusing every other global."""

    def __init__(self, z: zipfile.ZipFile, top: str, path: Path):
        super().__init__(io.BytesIO(z.read(f"{top}/data.pkl")))
        self.z, self.top, self.path = z, top, path
        self.stand_ins = {}  # qualified class name -> its ScriptObject subclass
        self.storages = {}  # storage key -> storage; tensors that share a storage (views) share it here too
        self.swap_bytes = byte_order(z, top) != sys.byteorder

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED_GLOBALS:
            return inert_copy(ALLOWED_GLOBALS[(module, name)])
        if module == SCRIPT_MODULE_PREFIX or module.startswith(SCRIPT_MODULE_PREFIX + "."):
            return self.stand_in(f"{module}.{name}")
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        if module == "torch" and name in DTYPES:
            return DTYPES[name]
        raise CheckpointError(
            f"{self.path}: its data.pkl asks for {module}.{name}, which is neither a tensor nor part of a "
            "TorchScript module, so miniclip refuses to unpickle it (it could run code). If you trust the file, "
            "re-save its state dict with torch.save or as safetensors."
        )

    def stand_in(self, qualified_name: str) -> type:
        if qualified_name not in self.stand_ins:
            self.stand_ins[qualified_name] = type(
                qualified_name.rsplit(".", 1)[-1], (ScriptObject,), {"qualified_name": qualified_name})
        return self.stand_ins[qualified_name]

    def persistent_load(self, saved_id):
        # ("storage", dtype (find_class resolved the storage type), key, location, number of elements),
        # as torch.serialization's _load reads it; the location is ignored: everything is read to the CPU.
        if not (isinstance(saved_id, tuple) and len(saved_id) == 5 and saved_id[0] == "storage"
                and isinstance(saved_id[1], torch.dtype) and isinstance(saved_id[4], int)):
            raise CheckpointError(f"{self.path}: data.pkl refers to {saved_id!r}, which is not a storage")
        _, dtype, key, _, numel = saved_id
        if key not in self.storages:
            self.storages[key] = self.read_storage(str(key), dtype, numel)
        return torch.storage.TypedStorage(wrap_storage=self.storages[key], dtype=dtype, _internal=True)

    def read_storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.UntypedStorage:
        name = f"{self.top}/data/{key}"
        nbytes = numel * torch._utils._element_size(dtype)
        try:
            size = self.z.getinfo(name).file_size
        except KeyError:
            raise CheckpointError(f"{self.path}: the archive has no {name}, a storage its data.pkl needs; "
                                  "the file is incomplete: re-download or re-save it") from None
        if size != nbytes:
            raise CheckpointError(f"{self.path}: {name} holds {size} bytes where data.pkl expects {numel} "
                                  f"{dtype} values ({nbytes} bytes); re-download or re-save it")
        if nbytes == 0:
            return torch.UntypedStorage(0)
        storage = torch.frombuffer(bytearray(self.z.read(name)), dtype=torch.uint8).untyped_storage()
        if self.swap_bytes:
            storage.byteswap(dtype)
        return storage


def inert_copy(allowed):
    """A new function calling `allowed`, if it is a Python function. A pickle's BUILD can set attributes (even
    __defaults__) on whatever find_class returned; it must not reach torch's own functions, which every later
    load would share. OrderedDict and torch.device are built-in types, whose attributes cannot be set."""
    if not isinstance(allowed, types.FunctionType):
        return allowed
    return lambda *args: allowed(*args)


def byte_order(z: zipfile.ZipFile, top: str) -> str:
    """The byte order the storages were written in: <top>/byteorder since torch 2.1, little-endian before."""
    name = f"{top}/byteorder"
    return z.read(name).decode().strip() if name in z.namelist() else "little"


# -----------------------------------------------------------------------------
# code/: which attributes are parameters and buffers


def module_members(z: zipfile.ZipFile, top: str, path: Path) -> dict[str, tuple[list, list]]:
    """Each module class's qualified name -> (its parameter names, its buffer names), read from the
    `__parameters__ = [...]` and `__buffers__ = [...]` lines of its class body in code/.

    code/__torch__/torch/nn/modules/linear.py, `class Linear(Module):` -> "__torch__.torch.nn.modules.linear.Linear"
    """
    members = {}
    prefix = f"{top}/code/"
    for name in z.namelist():
        if not (name.startswith(prefix) and name.endswith(".py")):
            continue
        module = name[len(prefix):-len(".py")].replace("/", ".")
        where = f"{path}: {name}"
        current = None  # the module class whose body the lines are in
        for line in z.read(name).decode("utf-8", errors="replace").splitlines():
            if line and not line[0].isspace():  # a class, a function or a statement at the top: a new body
                match = MODULE_CLASS_LINE.fullmatch(line)
                current = members.setdefault(f"{module}.{match.group(1)}", ([], [])) if match else None
            elif current is not None and (match := MEMBER_LIST_LINE.fullmatch(line)):
                names = member_names(match.group(2), where)
                current[0 if match.group(1) == "__parameters__" else 1][:] = names
    return members


def member_names(literal: str, where: str) -> list[str]:
    try:
        names = ast.literal_eval(literal)  # a literal only: never a call, a name or an expression
    except (ValueError, SyntaxError) as e:
        raise CheckpointError(f"{where}: a __parameters__/__buffers__ list is not a literal list of names "
                              f"({literal[:80]}); the archive is damaged: re-download or re-save it") from e
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise CheckpointError(f"{where}: a __parameters__/__buffers__ list holds something other than names: "
                              f"{literal[:80]}; the archive is damaged: re-download or re-save it")
    return names


# -----------------------------------------------------------------------------
# The state dict: parameters, then buffers, then each submodule's, as nn.Module.state_dict orders them


def module_state_dict(root, members: dict, path: Path) -> dict[str, torch.Tensor]:
    if not is_module(root, members):
        raise CheckpointError(f"{path}: data.pkl holds {type(root).__name__}, not a TorchScript module "
                              f"declared in code/ (`class ...(Module):`); re-download or re-save it")
    sd = {}
    add_module(root, "", members, sd, path, ancestors=())
    return sd


def is_module(value, members: dict) -> bool:
    return isinstance(value, ScriptObject) and value.qualified_name in members


def add_module(obj: ScriptObject, prefix: str, members: dict, sd: dict, path: Path, ancestors: tuple) -> None:
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: the module {prefix.rstrip('.') or '(the root)'} ({obj.qualified_name}) restores its state "
            "with its own __setstate__ code, which miniclip does not run; load it with torch.jit.load if you "
            "trust it and save its state_dict() with torch.save or as safetensors"
        )
    if id(obj) in ancestors:
        raise CheckpointError(f"{path}: the module {prefix.rstrip('.')} contains itself; the archive is damaged")
    parameters, buffers = members[obj.qualified_name]
    for names in (parameters, buffers):
        for name, value in state.items():  # the pickled attribute order is the modules' slot order, as jit's
            if name in names and isinstance(value, torch.Tensor):  # an unset Optional[Tensor] is None: skipped
                sd[prefix + name] = value.detach()
    for name, value in state.items():
        if is_module(value, members):
            add_module(value, f"{prefix}{name}.", members, sd, path, ancestors + (id(obj),))
