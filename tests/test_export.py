"""ONNX export of both towers: onnxruntime gives the model's embeddings, for any batch size.

Exporting takes ~10 s a tower here (torch.export + the ONNX translation), so each model is exported once.
"""

import onnxruntime as ort
import pytest
import torch

from miniclip import CLIP
from miniclip.cli import main
from miniclip.export import IMAGE_FILE, OPSET, TEXT_FILE, check_onnx, export_onnx

ONNX_ATOL = 1e-5  # the bound; fp32 graph vs eager fp32 differ by operator rounding only (~1e-6 seen)


@pytest.fixture(scope="module")
def exported(tiny_dir, tmp_path_factory):
    model = CLIP.from_pretrained(tiny_dir)
    folder = tmp_path_factory.mktemp("onnx")
    return model, folder, export_onnx(model, folder)


def test_both_towers_match_onnxruntime(exported):
    model, folder, written = exported
    assert [p.name for p in written] == [IMAGE_FILE, TEXT_FILE]
    for name, diff in check_onnx(model, folder, batch=3).items():
        assert diff < ONNX_ATOL, (name, diff)


def test_the_batch_dimension_is_dynamic_and_the_opset_is_stated(exported):
    import onnx

    model, folder, _ = exported
    for name in (IMAGE_FILE, TEXT_FILE):
        graph = onnx.load(str(folder / name))
        assert any(op.domain in ("", "ai.onnx") and op.version == OPSET for op in graph.opset_import)
        session = ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
        first = session.get_inputs()[0].shape[0]
        assert isinstance(first, str), f"{name}: batch dimension is fixed at {first}"  # a symbol, not a number
    assert check_onnx(model, folder, batch=1)[TEXT_FILE] < ONNX_ATOL  # a batch of 1, unlike the example's 2


def test_a_text_with_two_end_of_text_tokens_exports_the_same_pooling(exported):
    # The first end-of-text token is read (OpenAI's argmax); the graph must not bake in a position.
    model, folder, _ = exported
    ids = model.tokenize(["a cat <|endoftext|> and more words after it", "short"])
    session = ort.InferenceSession(str(folder / TEXT_FILE), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input_ids": ids.numpy()})
    with torch.no_grad():
        expected = model.encode_text(ids)
    assert (torch.from_numpy(got) - expected).abs().max().item() < ONNX_ATOL


def test_export_leaves_the_callers_model_alone(tiny_dir, tmp_path):
    model = CLIP.from_pretrained(tiny_dir, dtype=torch.bfloat16).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path)
    assert model.training and model.dtype == torch.bfloat16
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_cli_export(tiny_dir, tmp_path, capsys):
    assert main(["export", str(tiny_dir), str(tmp_path / "out"), "--to", "onnx"]) == 0
    err = capsys.readouterr().err
    assert (tmp_path / "out" / IMAGE_FILE).is_file() and (tmp_path / "out" / TEXT_FILE).is_file()
    assert "onnxruntime vs PyTorch" in err and f"opset {OPSET}" in err
