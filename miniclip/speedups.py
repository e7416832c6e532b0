"""Inference speed-ups for CPU, kept beside the model rather than inside it.

    model = miniclip.speedups.apply(CLIP.from_pretrained("ViT-B/32"))   # what miniclip.load returns
    model = miniclip.speedups.remove(model)                             # the plain model again

miniclip/model.py is the paper's arithmetic. This module changes how some of it is computed, never what:
each speed-up gives the plain model's numbers to fp32 rounding (tests/test_model.py), and each one steps
aside by itself, running the plain module's own code, wherever it could change what a user sees:
- under autograd (a tensor or parameter that requires grad, outside torch.no_grad / inference_mode),
  autocast, torch.compile, torch.export (and so ONNX export), torch.jit.trace and torch.fx tracing;
- for a module the user has replaced or hooked, or whose class has a method patched, below the point
  where the shortcut starts (checked at every call; see `untouched`).
`apply` swaps the classes of the modules concerned for subclasses, in place, as torch.nn.utils.parametrize
does: parameters, state dict, hooks and `isinstance` checks stay as they were. Tools that match module
types exactly (torch.ao.quantization.quantize_dynamic) want the plain model: `remove` gives it back.

What each one saves, measured on ViT-B/32 (2-core AMD EPYC, fp32, `python -m benchmarks.model`):
1. oneDNN matrix multiplies (`OneDNNLinear`): torch's CPU builds multiply fp32 matrices with MKL, which on
   AMD CPUs does not use AVX-512 (MKL_VERBOSE=1 names a generic code path); oneDNN, also inside torch (it
   already runs the convolutions), does. 1.2-1.5x on ViT-B/32's matrices (`python -m benchmarks.kernels`),
   most of the image encoder's lead over transformers. On Intel CPUs MKL does use AVX-512 and matched or
   beat oneDNN (measured on a Xeon), so there the linear layers keep torch's default (PREFER_ONEDNN).
   The same product summed in another order: embeddings move by a few 1e-6.
2. The patch embedding as one matrix multiply (`PatchEmbeddingAsMatmul`): the stride-equals-kernel
   convolution is (B * patches, 3 * patch²) @ (3 * patch², width); on oneDNN about 1.6x faster than the
   convolution kernel.
3. The activation in place (`InPlaceMLP`): the MLP's hidden activations are the largest tensors of a
   forward pass (ViT-B/32, batch 32: 20 MB a layer). Out of place a second buffer that size is alive next
   to the first, and when both are freed glibc returns them to the OS, so every layer page-faults them back
   in: 7-10% of the image encoder's time. In place, a few MB at a time, nothing is returned.
4. The last block for the pooled token alone (`PooledVisionTransformer`, `PooledTextTransformer`): the
   embeddings read one token (the class token, the end-of-text token). Keys and values still need every
   token, but the attention output, the MLP and the residual stream of the other T - 1 do not: three
   quarters of the last block, 6% of a ViT-B/32 image encoder.
5. Text cut after the batch's last end-of-text token (`PooledTextTransformer`): attention is causal, so
   no position changes the ones before it. Captions are far shorter than 77 tokens (the benchmark's 256
   captions end by position 19): 7x the texts a second of a model fed all 77.
6. malloc thresholds (miniclip/malloc.py, `keep_freed_memory`): process-wide, so never applied by a
   library call; the `miniclip` command, which owns its process, calls it.
"""

import types

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import (MLP, QUICK_GELU_SCALE, Attention, AttentionalPooler, Block, LayerScale, QuickGELU,
                    TextTransformer, VisionTransformer)


def eager_inference(x, *modules: nn.Module) -> bool:
    """Whether a speed-up may run on input `x` to `modules`: eager PyTorch computing values, with nothing
    for autograd to record and no autocast. Tracers, compilers and exporters get the plain code, which is
    what they know how to translate."""
    if type(x) is not torch.Tensor:  # a torch.fx proxy, torch.export's fake tensors: a graph is being recorded
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing():  # torch.compile; torch.export sets it too
        return False
    if torch.amp.is_autocast_available(x.device.type) and torch.is_autocast_enabled(x.device.type):
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for m in modules
                                                                    for p in m.parameters())))


# -----------------------------------------------------------------------------
# 1, 2. oneDNN matrix multiplies

# torch.ops.mkldnn._linear_pointwise is the op torch.compile's CPU backend emits for linear layers; it is not
# public API, so its absence (a torch built without oneDNN, or a future rename) just means F.linear.
onednn_linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def cpu_vendor() -> str:
    """The CPU's vendor string on Linux ("GenuineIntel", "AuthenticAMD", ...); "" where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


# MKL takes its AVX-512 kernels on Intel CPUs only. There it matched or beat oneDNN on ViT-B/32's shapes
# (`python -m benchmarks.kernels` on a 2-core Xeon: oneDNN 0.85-1.04x of MKL; the image encoder 10% slower
# with oneDNN), so the linear layers keep torch's default there. Elsewhere (AMD) oneDNN is 1.2-1.5x faster.
PREFER_ONEDNN = onednn_linear is not None and cpu_vendor() != "GenuineIntel"


def fits_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """What oneDNN's op is made for: CPU, fp32, non-empty, contiguous tensors (the op silently ignores a
    strided bias's stride, found by test_onednn_linear_matches_f_linear_for_any_layout)."""
    return (onednn_linear is not None and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and x.dim() >= 2 and x.numel() > 0 and all(t is None or t.is_contiguous() for t in (x, weight, bias)))


class OneDNNLinear(nn.Linear):
    """nn.Linear, multiplied by oneDNN for CPU fp32 inference on CPUs where that is faster (PREFER_ONEDNN)."""

    def forward(self, x):
        if PREFER_ONEDNN and eager_inference(x, self) and fits_onednn(x, self.weight, self.bias):
            return onednn_linear(x, self.weight, self.bias, "none", [], "")
        return super().forward(x)


class PatchEmbeddingAsMatmul(nn.Conv2d):
    """The ViT's patch embedding (a convolution whose stride is its kernel), as one matrix multiply on oneDNN."""

    def forward(self, pixel_values):
        patchify = (self.stride == self.kernel_size and self.padding == (0, 0) and self.dilation == (1, 1)
                    and self.groups == 1 and self.bias is None and self.padding_mode == "zeros")
        if not (patchify and eager_inference(pixel_values, self)):
            return super().forward(pixel_values)
        kernel = self.weight.view(self.out_channels, -1)  # (width, 3 * p * p), flattened as (channel, row, column)
        if not fits_onednn(pixel_values, kernel, None):
            return super().forward(pixel_values)
        B, C, H, W = pixel_values.shape
        ph, pw = self.kernel_size
        gh, gw = H // ph, W // pw
        # (B, C, gh, ph, gw, pw) -> (B, gh, gw, C, ph, pw): each patch's pixels in the kernel's order
        patches = pixel_values[..., : gh * ph, : gw * pw].reshape(B, C, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)
        x = onednn_linear(patches.reshape(B * gh * gw, C * ph * pw), kernel, None, "none", [], "")
        return x.view(B, gh, gw, -1).permute(0, 3, 1, 2)  # (B, width, gh, gw), the convolution's layout


# -----------------------------------------------------------------------------
# 3. The activation in place

QUICK_GELU_CHUNK = 1 << 19  # elements per slice of quick_gelu_'s temporary: 2 MB in fp32


def quick_gelu_(x: torch.Tensor) -> torch.Tensor:
    """QuickGELU, overwriting x (contiguous), a slice of rows at a time. The same arithmetic: results agree
    with QuickGELU's to a bit or two (torch's vectorised and scalar sigmoid kernels differ in the last bit,
    and which elements each one gets depends on how a tensor is split among threads)."""
    rows = x.view(-1, x.size(-1))
    for chunk in rows.split(max(1, QUICK_GELU_CHUNK // x.size(-1))):
        chunk.mul_(torch.sigmoid(chunk * QUICK_GELU_SCALE))
    return x


class InPlaceMLP(MLP):
    """fc2(act(fc1(x))) with QuickGELU applied in place on fc1's output, where that output is ours alone:
    a CPU tensor (on a GPU the slices would only be more kernel launches) made by a linear layer nobody has
    replaced or hooked (a hook may keep the pre-activations), and an activation nobody has hooked."""

    def forward(self, x):
        if not (eager_inference(x, self) and x.device.type == "cpu" and type(self.act) is QuickGELU
                and untouched(self, (self.fc1, self.act))):
            return super().forward(x)
        return self.fc2(quick_gelu_(self.fc1(x)))


# -----------------------------------------------------------------------------
# 4, 5. The last block for the pooled token alone; text cut after the last end-of-text token


def block_at(block: Block, x: torch.Tensor, at: torch.Tensor, causal: bool) -> torch.Tensor:
    """block(x, causal)[0][arange(B), at], (B, C), computed for the positions `at` (B,) alone: keys and values
    for every token, everything else for one token a sequence. Exact: no other position's output of the
    block reaches these."""
    attn = block.attn
    B, T, C = x.shape
    rows = torch.arange(B, device=x.device)
    q, k, v = attn.qkv(block.ln_1(x)).view(B, T, 3, attn.heads, C // attn.heads).permute(2, 0, 3, 1, 4).unbind(0)
    if attn.qk_norm:
        q, k = attn.ln_q(q), attn.ln_k(k)
    q = q[rows, :, at].unsqueeze(2)  # (B, nh, 1, hs): one query a sequence
    # a causal query at position p sees keys 0..p; SDPA's is_causal would align it with key 0 instead
    mask = (torch.arange(T, device=x.device) <= at[:, None]).view(B, 1, 1, T) if causal else None
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, 1, hs)
    x = x[rows, at] + block.ls_1(attn.proj(y.reshape(B, C)))  # (B, C)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class PooledVisionTransformer(VisionTransformer):
    """encode_image with the last block computing the class token alone (OpenAI's head reads nothing else)."""

    def forward(self, pixel_values, output_hidden_states=False, output_attentions=False,
                interpolate_pos_encoding=False):
        if (output_hidden_states or output_attentions or self.cfg.pool != "tok" or self.cfg.attn_pool_queries
                or not self.blocks or not eager_inference(pixel_values, self) or not untouched(self, self.children())):
            return super().forward(pixel_values, output_hidden_states, output_attentions, interpolate_pos_encoding)
        x = self.ln_pre(self.embed(pixel_values, interpolate_pos_encoding))
        for block in self.blocks[:-1]:
            x, _ = block(x)
        cls = torch.zeros(x.size(0), dtype=torch.long, device=x.device)  # the class token, first in each sequence
        return self.head(block_at(self.blocks[-1], x, cls, causal=False).unsqueeze(1))  # head reads x[:, 0]


class PooledTextTransformer(TextTransformer):
    """encode_text with the last block computing the pooled token alone, and, for a causal tower read at the
    end-of-text token, every position after the batch's last end-of-text token dropped before the blocks."""

    def forward(self, input_ids, output_hidden_states=False, output_attentions=False):
        if (output_hidden_states or output_attentions or not self.blocks or not eager_inference(input_ids, self)
                or not input_ids.numel() or not untouched(self, self.children())):
            return super().forward(input_ids, output_hidden_states, output_attentions)
        B, T = input_ids.shape
        if self.cfg.pool == "eot":
            at = self.eot_positions(input_ids)
            if self.cfg.causal:
                input_ids = input_ids[:, : int(at.max()) + 1]
        else:
            at = torch.full((B,), T - 1 if self.cfg.pool == "last" else 0, dtype=torch.long, device=input_ids.device)
        x = self.embed(input_ids)
        for block in self.blocks[:-1]:
            x, _ = block(x, self.cfg.causal)
        return self.proj(self.ln_final(block_at(self.blocks[-1], x, at, self.cfg.causal)))


# -----------------------------------------------------------------------------
# Guards: has anything below this module been replaced, hooked or patched?

# The module classes the shortcuts know, each with its own forward, or a speed-up's subclass of one.
PLAIN = {Block, Attention, MLP, QuickGELU, LayerScale, AttentionalPooler, nn.Linear, nn.LayerNorm, nn.GELU,
         nn.Identity, nn.Embedding, nn.Conv2d, nn.ModuleList}


def untouched(module: nn.Module, children) -> bool:
    """Whether `module`'s class and every module in `children`'s subtrees are miniclip's or torch's own,
    unhooked (the module's own forward hooks and pre-hooks; torch's global hooks, a debugging facility, are
    not consulted) and with no method patched on the class or replaced on the instance. Where that holds,
    the plain modules compute what the shortcut computes, and nobody watches the difference."""
    classes = {type(module)}
    for child in children:
        for m in child.modules():
            if m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__:
                return False
            classes.add(type(m))
    return all(plain_class(cls) for cls in classes)


def plain_class(cls: type) -> bool:
    """cls is one of PLAIN (or a subclass of this module's), and every method its classes define is still
    the one written in their source: a method assigned later (`Attention.forward = my_forward`) was defined
    elsewhere, under another name."""
    if cls not in PLAIN and not (cls.__module__ == __name__ and cls.__base__ in PLAIN | TOWERS):
        return False
    for c in cls.__mro__[: cls.__mro__.index(nn.Module)]:
        for name, value in vars(c).items():
            if isinstance(value, types.FunctionType) and (value.__module__ != c.__module__
                                                          or value.__qualname__ != f"{c.__qualname__}.{name}"):
                return False
    return True


# -----------------------------------------------------------------------------
# Applying and removing

TOWERS = {VisionTransformer, TextTransformer}
FAST = {nn.Linear: OneDNNLinear, MLP: InPlaceMLP, VisionTransformer: PooledVisionTransformer,
        TextTransformer: PooledTextTransformer}


def apply(model: nn.Module) -> nn.Module:
    """Gives `model`'s modules the speed-ups above, in place, and returns it. Idempotent; modules of other
    classes (a user's own, already swapped) are left alone."""
    for module in model.modules():
        if type(module) in FAST:
            module.__class__ = FAST[type(module)]
        if isinstance(module, VisionTransformer) and type(module.patch_embed) is nn.Conv2d:
            module.patch_embed.__class__ = PatchEmbeddingAsMatmul
    return model


def remove(model: nn.Module) -> nn.Module:
    """The plain model again, in place: every speed-up's subclass back to the class it came from."""
    fast = set(FAST.values()) | {PatchEmbeddingAsMatmul}
    for module in model.modules():
        if type(module) in fast:
            module.__class__ = type(module).__base__
    return model
