"""The Python API's arguments in the forms people pass them: dtypes by name, and zero-shot templates and
truncation. (Images as arrays and tensors are in test_preprocess.py.)"""

import pytest
import torch
import torch.nn.functional as F

import miniclip
from miniclip import CLIP
from miniclip.dtypes import as_dtype
from miniclip.errors import InputError, InputTypeError, TokenizerError

# -----------------------------------------------------------------------------
# dtype: a torch dtype or a name for one


@pytest.mark.parametrize("name,dtype", [
    ("float32", torch.float32), ("fp32", torch.float32), ("FP32", torch.float32), ("torch.float32", torch.float32),
    ("float16", torch.float16), ("fp16", torch.float16), ("half", torch.float16), ("torch.float16", torch.float16),
    ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16), ("torch.bfloat16", torch.bfloat16),
    (torch.float32, torch.float32), (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
    (None, None),
])
def test_dtype_names(name, dtype):
    assert as_dtype(name) is dtype


@pytest.mark.parametrize("name,dtype", [("fp16", torch.float16), ("bfloat16", torch.bfloat16),
                                        ("torch.float16", torch.float16), ("float32", torch.float32)])
def test_from_pretrained_and_load_take_a_dtype_name(tiny_dir, name, dtype):
    model = CLIP.from_pretrained(tiny_dir, dtype=name)
    assert model.dtype == dtype and all(p.dtype == dtype for p in model.parameters())
    reference = CLIP.from_pretrained(tiny_dir, dtype=dtype)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    model, _ = miniclip.load(tiny_dir, dtype=name)
    assert model.dtype == dtype


@pytest.mark.parametrize("dtype,error,words", [
    ("float8", InputError, ["dtype='float8'", "'fp16'", "'bf16'", "torch.float32"]),
    ("int8", InputError, ["dtype='int8'", "'float32'"]),
    (torch.int8, InputError, ["torch.int8", "'float16'"]),
    (torch.float64, InputError, ["torch.float64", "'bfloat16'"]),
    (16, InputTypeError, ["dtype is a int", "'fp16'"]),
    ("", InputError, ["dtype=''"]),
])
def test_unknown_dtypes_are_refused_naming_the_accepted_ones(tiny_dir, dtype, error, words):
    for call in (lambda: CLIP.from_pretrained(tiny_dir, dtype=dtype), lambda: miniclip.load(tiny_dir, dtype=dtype)):
        with pytest.raises(error) as e:
            call()
        for w in words:
            assert w in str(e.value)


def test_dtype_is_checked_before_the_checkpoint_is_looked_for(tmp_path):
    with pytest.raises(InputError, match="dtype='fp8'"):
        CLIP.from_pretrained(tmp_path / "nothing-here", dtype="fp8")


# -----------------------------------------------------------------------------
# zero_shot_classifier: templates and truncation

LONG_LABEL = "very " * 80 + "long label"  # far beyond 77 tokens


def test_truncate_reaches_the_tokenizer(tiny):
    with pytest.raises(TokenizerError, match="truncate=True"):
        miniclip.zero_shot_classifier(tiny, [LONG_LABEL, "cat"])
    classifier = miniclip.zero_shot_classifier(tiny, [LONG_LABEL, "cat"], truncate=True)
    ids = miniclip.tokenize(["a photo of a " + LONG_LABEL + ".", "a photo of a cat."], truncate=True)
    with torch.no_grad():
        embeds = F.normalize(tiny.encode_text(ids).float(), dim=-1)
    assert torch.equal(classifier.weights, F.normalize(embeds, dim=-1))  # one template: the mean is itself


def test_truncate_reaches_a_tokenizer_of_ones_own(tiny):
    calls = []

    def tokenize(texts, context_length, **kwargs):
        calls.append(kwargs)
        return miniclip.tokenize(texts, context_length=context_length, **kwargs)

    miniclip.zero_shot_classifier(tiny, [LONG_LABEL], tokenize=tokenize, truncate=True)
    miniclip.zero_shot_classifier(tiny, ["cat"], tokenize=tokenize)
    # truncate=False is not passed: a tokenize without that argument (open_clip's) keeps working
    assert calls == [{"truncate": True}, {}]


@pytest.mark.parametrize("template", ["a photo of a {}.", "{}", "a {{braced}} {}", "{} {{}}", "a {}}} b {{"])
def test_good_templates(tiny, template):
    classifier = miniclip.zero_shot_classifier(tiny, ["cat", "dog"], [template])
    assert classifier.weights.shape == (2, tiny.config.embed_dim)


@pytest.mark.parametrize("template,found", [
    ("a {} of {x}", "{}, {x}"),  # today's count("{}") == 1 check passes it, then str.format raises KeyError
    ("a photo", "none"),
    ("{}{}", "{}, {}"),
    ("a {0} photo", "{0}"),
    ("a {:>9} photo", "{:>9}"),
    ("a {!r} photo", "{!r}"),
    ("a {x} photo", "{x}"),
])
def test_templates_with_other_fields_are_refused(tiny, template, found):
    with pytest.raises(InputError) as e:
        miniclip.zero_shot_classifier(tiny, ["cat"], ["a photo of a {}.", template])
    message = str(e.value)
    assert f"templates[1] {template!r}" in message and "exactly one '{}'" in message
    assert f"found: {found} " in message
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("template", ["a { photo {}", "a } photo {}"])
def test_templates_with_lone_braces_are_refused(tiny, template):
    with pytest.raises(InputError, match=r"not a str\.format template.*'\{\{' and '\}\}'"):
        miniclip.zero_shot_classifier(tiny, ["cat"], [template])
