"""nn.Linear, with CPU fp32 inference run by oneDNN instead of the BLAS library torch calls by default.

Why: torch's CPU builds multiply fp32 matrices with MKL, which on AMD CPUs does not use AVX-512
(MKL_VERBOSE=1 names a generic code path); oneDNN, also inside torch (it already runs the convolutions),
does (ONEDNN_VERBOSE=1 reports AVX-512). On this project's machines (AMD EPYC) it multiplies ViT-B/32's
matrices 1.2-1.5x faster (`python -m benchmarks.kernels`). On Intel CPUs, where MKL uses AVX-512 too,
expect little difference (not measured). The arithmetic is the same matrix product summed in another
order: embeddings move by a few 1e-6, and the parity tests hold transformers' tolerances with either kernel.

The module is still an nn.Linear (same parameters, same state dict, hooks, isinstance checks); only the
kernel differs, and only where oneDNN's op is made for: CPU, fp32, contiguous tensors, nothing for autograd
to record. Set `miniclip.linear.ONEDNN = False` (or MINICLIP_ONEDNN=0 in the environment) for torch's own
F.linear, the kernel transformers runs, e.g. to compare the two models with the same summation order.
"""

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

ONEDNN = os.environ.get("MINICLIP_ONEDNN", "1") != "0"

# torch.ops.mkldnn._linear_pointwise is the op torch.compile's CPU backend emits for linear layers; it is
# not public API, so its absence (a torch built without oneDNN, or a future rename) just means F.linear.
_onednn_linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), on oneDNN where that applies."""
    if use_onednn(x, weight, bias):
        return _onednn_linear(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def use_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    # Contiguous tensors only: the op silently ignores a strided bias's stride (found by
    # test_onednn_linear_matches_f_linear_for_any_layout), and contiguous is all the model passes it.
    return (ONEDNN and _onednn_linear is not None
            # a traced or compiled graph gets the standard op: inductor picks its own kernel, and
            # exporters (ONNX, TorchScript files) know aten::linear, not this one
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and x.dim() >= 2 and x.numel() > 0
            and all(t is None or t.is_contiguous() for t in (x, weight, bias))
            and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))))


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

    def use_onednn(self, x: torch.Tensor) -> bool:
        return use_onednn(x, self.weight, self.bias)
