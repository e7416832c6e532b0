"""Export: each tower as an ONNX graph, for runtimes without PyTorch (onnxruntime, TensorRT, browsers).

    miniclip export ViT-B/32 clip-onnx/ --to onnx     # image_encoder.onnx + text_encoder.onnx

The towers are exported separately, as they are used: images are embedded once and indexed, texts at query
time. Each graph takes a batch of any size (a dynamic first dimension) and returns the embeddings that
`encode_image` / `encode_text` return (not normalised). torch.onnx's exporter (`dynamo=True`, which needs
onnxscript) traces the model with torch.export, so the graph is the plain model's arithmetic: the inference
speed-ups step aside while exporting.
"""

import copy
from pathlib import Path

import torch
from torch import nn

from .model import CLIP

OPSET = 18  # the opset torch.onnx's exporter writes by default; onnxruntime >= 1.14 runs it
IMAGE_FILE, TEXT_FILE = "image_encoder.onnx", "text_encoder.onnx"


class Encoder(nn.Module):
    """One tower as a module of its own: encode_image ((B, 3, H, W) normalised pixels) or encode_text
    ((B, context_length) token ids) -> (B, embed_dim) embeddings."""

    def __init__(self, model: CLIP, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x):
        return getattr(self.model, self.method)(x)


def export_onnx(model: CLIP, folder, opset: int = OPSET) -> list[Path]:
    """Write image_encoder.onnx and text_encoder.onnx into `folder`; returns their paths."""
    from .errors import require

    require("onnxscript", "onnx", "ONNX export")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if model.training or model.dtype != torch.float32:  # a copy: the caller's model is left as it is
        model = copy.deepcopy(model).float().eval()  # fp32, what ONNX runtimes expect by default
    size = (model.config.vision.image_size,) * 2 if isinstance(model.config.vision.image_size, int) \
        else tuple(model.config.vision.image_size)
    examples = [
        (Encoder(model, "encode_image").eval(), torch.zeros(2, 3, *size), "pixel_values", "image_embeds", IMAGE_FILE),
        (Encoder(model, "encode_text").eval(), model.tokenize(["a photo", "a cat"]).cpu(), "input_ids", "text_embeds", TEXT_FILE),
    ]
    written = []
    for module, example, input_name, output_name, name in examples:
        batch = torch.export.Dim("batch", min=1, max=4096)
        torch.onnx.export(module, (example.to(model.device),), folder / name, dynamo=True, opset_version=opset,
                          input_names=[input_name], output_names=[output_name],
                          dynamic_shapes=({0: batch},), verbose=False)
        written.append(folder / name)
    return written


def check_onnx(model: CLIP, folder, batch: int = 3) -> dict[str, float]:
    """Max |difference| between each exported graph (run by onnxruntime) and the model, on a batch of `batch`
    (another size than the export's example, so the dynamic batch dimension is exercised too)."""
    from .errors import require

    ort = require("onnxruntime", "onnx", "checking an ONNX export")
    g = torch.Generator().manual_seed(0)
    size = (model.config.vision.image_size,) * 2 if isinstance(model.config.vision.image_size, int) \
        else tuple(model.config.vision.image_size)
    pixels = torch.randn(batch, 3, *size, generator=g)
    ids = model.tokenize([f"a photo of {n} cats" for n in range(batch)]).cpu()
    with torch.no_grad():
        expected = {IMAGE_FILE: model.encode_image(pixels.to(model.device, model.dtype)),
                    TEXT_FILE: model.encode_text(ids.to(model.device))}
    inputs = {IMAGE_FILE: pixels, TEXT_FILE: ids}
    diffs = {}
    for name, x in inputs.items():
        session = ort.InferenceSession(str(Path(folder) / name), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        diffs[name] = (torch.from_numpy(got) - expected[name].float().cpu()).abs().max().item()
    return diffs
