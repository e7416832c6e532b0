"""Bad input never gives a silent wrong answer: one table of bad inputs, each with the exception class it must
raise and the words its message must hold (which input, what was found, what was expected).

Each case is a function of the fixtures it needs, run once. Cases on the command line are in test_api.py
(USER_ERRORS); checkpoint-file cases also in test_loading.py. README quotes the count of this table.
"""

import pickle

import pytest
import torch
from PIL import Image

import miniclip
from miniclip import CLIP
from miniclip.errors import (
    CheckpointError, CheckpointNotFoundError, ImageError, InputError, InputTypeError, MiniclipError, TokenizerError,
)

SOT, EOT = 49406, 49407


def ids(*rows, length=77):
    out = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def px(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


# (id, function of (model, tmp_path), exception class, words in the message)
CASES = [
    # -- pixel tensors
    ("pixels-not-a-tensor", lambda m, t: m.encode_image([[0.0]]), InputError, ["torch.Tensor", "list"]),
    ("pixels-rank-3", lambda m, t: m.encode_image(px(3, 32, 32)), InputError, ["(3, 32, 32)", "unsqueeze(0)"]),
    ("pixels-rank-5", lambda m, t: m.encode_image(px(1, 1, 3, 32, 32)), InputError, ["(1, 1, 3, 32, 32)"]),
    ("pixels-1-channel", lambda m, t: m.encode_image(px(2, 1, 32, 32)), InputError, ["(2, 1, 32, 32)", "3"]),
    ("pixels-channels-last", lambda m, t: m.encode_image(px(2, 32, 32, 3)), InputError, ["(2, 32, 32, 3)"]),
    ("pixels-uint8", lambda m, t: m.encode_image(px(1, 3, 32, 32, dtype=torch.uint8)), InputError,
     ["torch.uint8", "miniclip.preprocess"]),
    ("pixels-int64", lambda m, t: m.encode_image(px(1, 3, 32, 32, dtype=torch.long)), InputError, ["torch.int64"]),
    ("pixels-wrong-size", lambda m, t: m.encode_image(px(1, 3, 40, 40)), InputError,
     ["40x40", "32x32", "interpolate_pos_encoding"]),
    ("pixels-not-square", lambda m, t: m.encode_image(px(1, 3, 32, 48)), InputError, ["32x48"]),
    ("pixels-float64-vs-float32-model", lambda m, t: m.encode_image(px(1, 3, 32, 32, dtype=torch.float64)),
     InputError, ["torch.float64", "torch.float32"]),
    ("pixels-half-vs-float32-model", lambda m, t: m.encode_image(px(1, 3, 32, 32, dtype=torch.float16)),
     InputError, ["torch.float16"]),
    ("pixels-meta-device", lambda m, t: m.encode_image(px(1, 3, 32, 32).to("meta")), InputError, ["meta", "cpu"]),
    ("forward-bad-pixels", lambda m, t: m(px(1, 3, 31, 32), ids([SOT, EOT])), InputError, ["31x32"]),
    # -- token ids
    ("ids-not-a-tensor", lambda m, t: m.encode_text([[SOT, EOT]]), InputError, ["torch.Tensor", "list"]),
    ("ids-rank-1", lambda m, t: m.encode_text(torch.tensor([SOT, EOT])), InputError, ["(2,)", "(batch, length)"]),
    ("ids-float", lambda m, t: m.encode_text(ids([SOT, EOT]).float()), InputError, ["torch.float32", "integer"]),
    ("ids-past-vocabulary", lambda m, t: m.encode_text(ids([SOT, 49408, EOT])), InputError,
     ["49408", "0..49407"]),
    ("ids-negative", lambda m, t: m.encode_text(ids([SOT, -1, EOT])), InputError, ["-1", "0..49407"]),
    ("ids-no-end-of-text", lambda m, t: m.encode_text(ids([SOT, 320, 321], [SOT, EOT])), InputError,
     ["rows [0]", "end-of-text", "49407", "miniclip.tokenize"]),
    ("ids-too-long", lambda m, t: m.encode_text(ids([SOT, EOT], length=78)), InputError, ["78", "77"]),
    ("ids-meta-device", lambda m, t: m.encode_text(ids([SOT, EOT]).to("meta")), InputError, ["meta", "cpu"]),
    ("clip-skip-out-of-range", lambda m, t: m.encode_text_tokens(ids([SOT, EOT]), clip_skip=2), ValueError,
     ["skip", "between 0 and 1"]),
    # -- checkpoints
    ("checkpoint-missing-path", lambda m, t: CLIP.from_pretrained(t / "nope"), CheckpointNotFoundError,
     ["nope", "no checkpoint file or folder"]),
    ("checkpoint-empty-folder", lambda m, t: CLIP.from_pretrained(t), CheckpointNotFoundError,
     ["none of the weights files", "model.safetensors"]),
    ("checkpoint-random-bytes", lambda m, t: CLIP.from_pretrained(write(t / "w.bin", bytes(range(256)) * 4)),
     CheckpointError, ["w.bin", "neither a safetensors file nor"]),
    ("checkpoint-empty-file", lambda m, t: CLIP.from_pretrained(write(t / "w.safetensors", b"")), CheckpointError,
     ["w.safetensors"]),
    ("checkpoint-pickled-list", lambda m, t: CLIP.from_pretrained(save(t / "w.pt", [torch.zeros(1)])),
     CheckpointError, ["w.pt", "state dict", "list"]),
    ("checkpoint-non-tensor-values", lambda m, t: CLIP.from_pretrained(save(t / "w.pt", {"a": 1})),
     CheckpointError, ["w.pt", "state dict"]),
    ("checkpoint-unknown-keys", lambda m, t: CLIP.from_pretrained(save(t / "w.pt", {"foo.weight": torch.zeros(1)})),
     CheckpointError, ["w.pt"]),
    ("checkpoint-unknown-preset", lambda m, t: CLIP.from_pretrained(save(t / "w.pt", {}), config="ViT-Z/99"),
     CheckpointError, ["ViT-Z/99"]),
    ("checkpoint-not-a-hub-id", lambda m, t: CLIP.from_pretrained("not a model"), CheckpointNotFoundError,
     ["'not a model'", "Hub id"]),
    ("checkpoint-offline-unknown-repo", lambda m, t: CLIP.from_pretrained("nobody/nothing"), CheckpointNotFoundError,
     ["nobody/nothing", "HF_HUB_OFFLINE=1"]),
    # -- tokenizer
    ("tokenize-int", lambda m, t: miniclip.tokenize(42), InputTypeError, ["int"]),
    ("tokenize-none", lambda m, t: miniclip.tokenize(None), InputTypeError, ["NoneType"]),
    ("tokenize-list-with-bytes", lambda m, t: miniclip.tokenize(["ok", b"bytes"]), InputTypeError, ["1", "bytes"]),
    ("tokenize-too-long", lambda m, t: miniclip.tokenize(["short", "word " * 100]), TokenizerError,
     ["1", "truncate=True"]),
    ("tokenize-context-too-small", lambda m, t: miniclip.tokenize("a cat", context_length=1, truncate=True),
     (TokenizerError, ValueError), ["context_length"]),
    # -- images
    ("image-missing-file", lambda m, t: miniclip.preprocess(t / "missing.png"), FileNotFoundError, ["missing.png"]),
    ("image-not-an-image", lambda m, t: miniclip.preprocess(write(t / "text.jpg", b"hello")), ImageError,
     ["text.jpg"]),
    ("image-truncated", lambda m, t: miniclip.preprocess(truncated_png(t / "cut.png")), ImageError, ["cut.png"]),
    ("image-wrong-type", lambda m, t: miniclip.preprocess(42), InputTypeError, ["int"]),
    ("image-wrong-type-in-list", lambda m, t: miniclip.preprocess([Image.new("RGB", (4, 4)), 3.5]), InputTypeError,
     ["1", "float"]),
    ("image-bad-crop-rule", lambda m, t: miniclip.preprocess(Image.new("RGB", (4, 4)), crop="middle"), ValueError,
     ["middle", "openai", "transformers"]),
    # -- zero-shot
    ("zero-shot-no-labels", lambda m, t: miniclip.zero_shot_classifier(m, []), ValueError, ["labels is empty"]),
    ("zero-shot-template-without-slot", lambda m, t: miniclip.zero_shot_classifier(m, ["cat"], ["a photo"]),
     ValueError, ["'a photo'", "{}"]),
    ("zero-shot-label-not-a-string", lambda m, t: miniclip.zero_shot_classifier(m, ["cat", 7]), InputTypeError,
     ["labels[1]", "int"]),
]


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def save(path, obj):
    torch.save(obj, path)
    return path


def truncated_png(path):
    Image.new("RGB", (64, 64), (200, 10, 10)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("case,make,error,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(case, make, error, words, tiny, tmp_path):
    with torch.no_grad(), pytest.raises(error) as info:
        make(tiny, tmp_path)
    message = str(info.value)
    for w in words:
        assert w in message, f"{case}: {w!r} not in the message {message!r}"
    if not isinstance(info.value, MiniclipError):
        # the few built-in errors allowed (clip_skip range, FileNotFoundError) still say what was wrong
        assert message


def test_enough_distinct_bad_inputs():
    assert len({c[0] for c in CASES}) == len(CASES) >= 40


def test_errors_keep_the_builtin_classes():
    # existing `except ValueError / TypeError / FileNotFoundError` clauses keep working
    assert issubclass(CheckpointError, ValueError) and issubclass(CheckpointNotFoundError, FileNotFoundError)
    assert issubclass(InputTypeError, TypeError) and issubclass(TokenizerError, ValueError)
    assert issubclass(ImageError, ValueError) and issubclass(InputError, ValueError)
    assert all(issubclass(e, MiniclipError) for e in (CheckpointError, TokenizerError, ImageError, InputError))


@torch.no_grad()
def test_empty_batches_give_empty_results(tiny):
    image = tiny.encode_image(px(0, 3, 32, 32))
    text = tiny.encode_text(torch.zeros(0, 77, dtype=torch.long))
    logits_per_image, logits_per_text = tiny(px(0, 3, 32, 32), ids([SOT, EOT]))
    assert image.shape == (0, 16) and text.shape == (0, 16)
    assert logits_per_image.shape == (0, 1) and logits_per_text.shape == (1, 0)
    assert miniclip.tokenize([]).shape == (0, 77)


def test_inputs_are_not_modified(tiny):
    pixels, tokens = torch.randn(2, 3, 32, 32), ids([SOT, 320, EOT], [SOT, EOT])
    before = pixels.clone(), tokens.clone()
    with torch.no_grad():
        tiny(pixels, tokens)
    assert torch.equal(pixels, before[0]) and torch.equal(tokens, before[1])


class CreatesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_a_pickle_that_would_create_a_file_is_refused_everywhere(tmp_path):
    victim = tmp_path / "created"
    for name in ("evil.bin", "evil.pt", "evil.pth", "pytorch_model.bin"):
        path = tmp_path / name
        with open(path, "wb") as f:  # a raw pickle, not even a torch zip archive
            pickle.dump({"w": CreatesAFile(victim)}, f)
        with pytest.raises(CheckpointError):
            CLIP.from_pretrained(path)
        assert not victim.exists()


# -----------------------------------------------------------------------------
# Fuzzing and threads


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(derandomize=True, max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".bin", ".pt", ".safetensors", ".ckpt", ""]),
       prefix=st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", (64).to_bytes(8, "little") + b"{"]))
def test_random_bytes_as_a_checkpoint_always_raise_the_checkpoint_error(tmp_path_factory, data, suffix, prefix):
    # prefixes that look like a zip archive, a pickle, or a safetensors header, to get past the first check
    path = tmp_path_factory.mktemp("fuzz") / f"weights{suffix}"
    path.write_bytes(prefix + data)
    with pytest.raises(CheckpointError):
        CLIP.from_pretrained(path)


def test_a_model_in_eval_mode_is_thread_safe(tiny):
    from concurrent.futures import ThreadPoolExecutor

    g = torch.Generator().manual_seed(0)
    jobs = [(torch.randn(2, 3, 32, 32, generator=g), ids([SOT, 320 + i, EOT], [SOT, EOT])) for i in range(16)]

    def run(job):
        with torch.no_grad():  # grad mode is per thread: each worker sets its own
            return tiny(*job)[0]

    alone = [run(job) for job in jobs]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(run, jobs))
    for a, b in zip(alone, together):
        assert torch.equal(a, b)
