"""CLIP, written out: a Vision Transformer image encoder, a causal text transformer, and the glue.

References:
1) the paper: Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision"
   https://arxiv.org/abs/2103.00020
2) OpenAI's release, the behavioural reference: https://github.com/openai/CLIP/blob/main/clip/model.py
3) transformers' port, the numerical reference our tests compare against:
   https://github.com/huggingface/transformers/blob/main/src/transformers/models/clip/modeling_clip.py

The file reads top to bottom: shared layers, the vision tower, the text tower, then CLIP itself.
Parameter names are ours (short, OpenAI-like); `miniclip.weights` maps every published layout onto them
with one explicit table per format. Nothing here knows about checkpoint formats.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import OPENAI_TOKENIZER, CLIPConfig, ResNetConfig, TextConfig, VisionConfig
from .errors import InputError
from .linear import Linear, linear, use_onednn
from .resnet import ModifiedResNet

# -----------------------------------------------------------------------------
# Shared layers


QUICK_GELU_SCALE = 1.702  # makes x * sigmoid(a x) closest to x * Phi(x) (Hendrycks & Gimpel 2016, section 2)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(1.702 x): the sigmoid approximation of GELU that OpenAI trained with."""
    return x * torch.sigmoid(QUICK_GELU_SCALE * x)


QUICK_GELU_CHUNK = 1 << 19  # elements per slice of quick_gelu_'s temporary: 2 MB in fp32


def quick_gelu_(x: torch.Tensor) -> torch.Tensor:
    """quick_gelu, overwriting x (contiguous), a slice of rows at a time. The same arithmetic: results agree
    with quick_gelu's to a bit or two (torch's vectorised and scalar sigmoid kernels differ in the last bit,
    and which elements each one gets depends on how a tensor is split among threads).

    Why: the MLP's hidden activations are the largest tensors in a forward pass (ViT-B/32 at batch 32:
    20 MB a layer). Out of place, a second buffer that size is alive next to the first, and when both are
    freed glibc returns them to the OS, so every layer page-faults them back in: 7-10% of the image
    encoder's time here. In place, with a temporary of a few MB that malloc keeps, nothing is returned.
    """
    rows = x.view(-1, x.size(-1))
    for chunk in rows.split(max(1, QUICK_GELU_CHUNK // x.size(-1))):
        chunk.mul_(torch.sigmoid(chunk * QUICK_GELU_SCALE))
    return x


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (open_clip's act_kwargs
    {"approximate": "tanh"}, transformers' "gelu_pytorch_tanh")."""
    return F.gelu(x, approximate="tanh")


def activation_fn(name: str):
    return {"quick_gelu": quick_gelu, "gelu": F.gelu, "gelu_tanh": gelu_tanh}[name]


class LayerScale(nn.Module):
    """x * gamma, one learned scale per channel on a residual branch (Touvron et al. 2021, CaiT)."""

    def __init__(self, width: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection.

    Two paths give the same numbers (tested): the fused `scaled_dot_product_attention` kernel, which
    never materialises the attention matrix, and an explicit softmax(q k^T / sqrt(d)) path that runs
    only when the caller asks for the attention probabilities.
    """

    def __init__(self, width: int, heads: int, qk_norm: bool = False, eps: float = 1e-5):
        super().__init__()
        self.heads = heads
        self.qkv = Linear(width, 3 * width)  # q, k and v stacked along the output dimension
        self.proj = Linear(width, width)
        if qk_norm:  # option: each head's queries and keys LayerNorm'd, bounding the attention logits
            self.ln_q = nn.LayerNorm(width // heads, eps=eps)
            self.ln_k = nn.LayerNorm(width // heads, eps=eps)
        self.qk_norm = qk_norm

    def forward(self, x: torch.Tensor, causal: bool = False, need_weights: bool = False, pool_at=None):
        """x (B, T, C) -> (B, T, C) and the attention probabilities (when need_weights), or with `pool_at`
        (B,) positions, the output at those positions alone, (B, 1, C): see `Block.forward`."""
        B, T, C = x.shape
        # (B, T, 3C) -> (B, T, 3, nh, hs) -> (3, B, nh, T, hs)
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        if self.qk_norm:
            q, k = self.ln_q(q), self.ln_k(k)
        if pool_at is not None:
            if need_weights:
                raise ValueError("need_weights and pool_at cannot be combined: the probabilities are (T, T)")
            return self.attend_from(q, k, v, pool_at, causal), None
        if need_weights:
            y, weights = explicit_attention(q, k, v, causal)
        else:
            y, weights = F.scaled_dot_product_attention(q, k, v, is_causal=causal), None
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, nh, T, hs) -> (B, T, C): re-assemble the heads
        return self.proj(y), weights

    def attend_from(self, q, k, v, pool_at, causal: bool):
        """One query per sequence, at position pool_at[b], against every key it may see: (B, 1, C)."""
        B, nh, T, hs = k.shape
        q = at_positions(q.transpose(1, 2), pool_at).unsqueeze(2)  # (B, T, nh, hs) -> (B, nh, 1, hs)
        # a causal query at position p sees keys 0..p; SDPA's is_causal would align it with key 0 instead
        mask = (torch.arange(T, device=q.device) <= pool_at[:, None]).view(B, 1, 1, T) if causal else None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, 1, hs)
        return self.proj(y.transpose(1, 2).reshape(B, 1, nh * hs))


def at_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, T, ...) and (B,) positions -> (B, ...): each sequence's entry at its own position."""
    return x[torch.arange(x.size(0), device=x.device), positions]


def explicit_attention(q, k, v, causal: bool):
    """softmax(q k^T / sqrt(hs) + mask) v, returning the probabilities (B, nh, T, T) as well."""
    scores = (q @ k.transpose(-2, -1)) * (q.size(-1) ** -0.5)
    if causal:
        T = q.size(-2)
        future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    # softmax in fp32, as transformers' eager path does, so fp16 probabilities sum to one
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
    return probs @ v, probs


class MLP(nn.Module):
    def __init__(self, width: int, mlp_width: int, activation: str):
        super().__init__()
        self.fc1 = Linear(width, mlp_width)
        self.act = activation_fn(activation)
        self.fc2 = Linear(mlp_width, width)

    def forward(self, x):
        h = self.fc1(x)
        if self.act is quick_gelu and self.owns_hidden(h):
            return self.fc2(quick_gelu_(h))
        return self.fc2(self.act(h))

    def owns_hidden(self, h: torch.Tensor) -> bool:
        """Whether fc1's output `h` is ours alone to overwrite, and overwriting it helps: a CPU tensor (what
        quick_gelu_ avoids is glibc's page faults; on a GPU its slices would only be more kernel launches),
        made by our own linear layer, seen by no forward hook (one may keep it, e.g. to study
        pre-activations), not needed by autograd, and not being traced or compiled (where the compiler fuses
        the activation anyway)."""
        return (h.device.type == "cpu" and type(self.fc1) in (Linear, nn.Linear)
                and not self.fc1._forward_hooks and not nn.modules.module._global_forward_hooks
                and not (torch.is_grad_enabled() and h.requires_grad)
                and not torch.compiler.is_compiling() and not torch.jit.is_tracing())


class Block(nn.Module):
    """A pre-LayerNorm residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).

    With the layer_scale option each branch's output is scaled per channel first: x + ls_1(attn(ln_1(x))).
    """

    def __init__(self, cfg: VisionConfig | TextConfig):
        super().__init__()
        width, eps = cfg.width, cfg.layer_norm_eps
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, cfg.heads, cfg.qk_norm, eps)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, cfg.mlp_width, cfg.activation)
        self.ls_1 = LayerScale(width) if cfg.layer_scale else nn.Identity()
        self.ls_2 = LayerScale(width) if cfg.layer_scale else nn.Identity()

    def forward(self, x, causal: bool = False, need_weights: bool = False, pool_at=None):
        """(B, T, C) -> (B, T, C), or with `pool_at` (B,) positions, only those tokens' outputs, (B, 1, C).

        `pool_at` is for the last block when only the pooled token is read (the class token, the
        end-of-text token): every key and value is still computed, but the attention output, the MLP and
        the residual stream for the other T - 1 tokens are not: three quarters of the block's work, 6% of
        a ViT-B/32 image encoder's.
        """
        a, weights = self.attn(self.ln_1(x), causal, need_weights, pool_at)
        if pool_at is not None:
            x = at_positions(x, pool_at).unsqueeze(1)  # (B, 1, C)
        x = x + self.ls_1(a)
        x = x + self.ls_2(self.mlp(self.ln_2(x)))
        return x, weights


def make_blocks(cfg: VisionConfig | TextConfig) -> nn.ModuleList:
    return nn.ModuleList(Block(cfg) for _ in range(cfg.layers))


def run_blocks(blocks, x, causal: bool, output_hidden_states: bool, output_attentions: bool):
    """Runs the residual stream through every block, recording what the caller asked for.

    Hidden states are counted as transformers counts them: the blocks' input first, then each block's
    output, so there are len(blocks) + 1 of them.
    """
    hidden_states = [x] if output_hidden_states else None
    attentions = [] if output_attentions else None
    for block in blocks:
        x, weights = block(x, causal, need_weights=output_attentions)
        if output_hidden_states:
            hidden_states.append(x)
        if output_attentions:
            attentions.append(weights)
    as_tuple = lambda xs: tuple(xs) if xs is not None else None  # noqa: E731
    return x, as_tuple(hidden_states), as_tuple(attentions)


def run_blocks_pooled(blocks, x, pool_at, causal: bool) -> torch.Tensor:
    """(B, T, C) -> (B, C): the residual stream at positions `pool_at` after every block, all that the
    embeddings read. The last block computes those positions alone (`Block.forward`), which is exact:
    no other position's output of the last block reaches them."""
    if len(blocks) == 0:
        return at_positions(x, pool_at)
    for block in blocks[:-1]:
        x, _ = block(x, causal)
    x, _ = blocks[-1](x, causal, pool_at=pool_at)
    return x[:, 0]


@dataclass
class EncoderOutput:
    """What `encode_image`/`encode_text` return when intermediates are asked for.

    embeds:            (B, embed_dim) the projected, un-normalised embedding (what encode_* returns alone)
    last_hidden_state: (B, T, width) every token after the tower's final LayerNorm (text: ln_final;
                       image: ln_post, applied to the patch tokens too)
    hidden_states:     blocks' input, then each block's output, (B, T, width) each; before the final LayerNorm
    attentions:        each block's attention probabilities, (B, heads, T, T)
    """

    embeds: torch.Tensor
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


# -----------------------------------------------------------------------------
# The vision tower: ViT (Dosovitskiy et al. 2020) with an extra LayerNorm before the blocks


class PatchEmbedding(nn.Conv2d):
    """Cuts the image into patch x patch squares and embeds each one: a convolution whose stride equals its
    kernel, so (B, 3, H, W) -> (B, width, H // patch, W // patch), pixels past the last whole patch ignored.

    That convolution is one matrix multiply: the flattened patches (B * gh * gw, 3 * patch²) times the
    flattened kernel. Computed that way where miniclip.linear runs oneDNN (CPU fp32 inference), it is about
    1.6x faster than the convolution kernel on ViT-B/32 here; elsewhere the convolution runs. Same output.
    """

    def __init__(self, width: int, patch_size: int | tuple[int, int]):
        super().__init__(3, width, kernel_size=patch_size, stride=patch_size, bias=False)

    def forward(self, pixel_values):
        kernel = self.weight.view(self.out_channels, -1)  # (width, 3 * p * p), flattened as (channel, row, column)
        if not use_onednn(pixel_values, kernel, None):
            return super().forward(pixel_values)
        B, C, H, W = pixel_values.shape
        ph, pw = self.kernel_size
        gh, gw = H // ph, W // pw
        # (B, C, gh, ph, gw, pw) -> (B, gh, gw, C, ph, pw): each patch's pixels in the kernel's order
        patches = pixel_values[..., : gh * ph, : gw * pw].reshape(B, C, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)
        x = linear(patches.reshape(B * gh * gw, C * ph * pw), kernel)  # (B * gh * gw, width)
        return x.view(B, gh, gw, -1).permute(0, 3, 1, 2)  # (B, width, gh, gw), the convolution's layout


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbedding(cfg.width, cfg.patch_size)
        self.class_embedding = nn.Parameter(torch.empty(cfg.width))
        self.position_embedding = nn.Parameter(torch.empty(cfg.num_positions, cfg.width))
        self.ln_pre = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps) if cfg.ln_pre else nn.Identity()
        self.blocks = make_blocks(cfg)
        # option: an attentional pooler maps the tokens to attn_pool_queries vectors of embed_dim, and the
        # rest of the head (ln_post, pooling, proj) then works at that width
        head_width = embed_dim if cfg.attn_pool_queries else cfg.width
        if cfg.attn_pool_queries:
            self.attn_pool = AttentionalPooler(cfg, embed_dim)
        self.ln_post = nn.LayerNorm(head_width, eps=cfg.layer_norm_eps)
        self.proj = Linear(head_width, embed_dim, bias=False)

    def embed(self, pixel_values, interpolate_pos_encoding: bool = False):
        x = self.patch_embed(pixel_values)  # (B, C, gh, gw)
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # (B, gh*gw, C)
        cls = self.class_embedding.to(x.dtype).expand(x.size(0), 1, -1)  # (B, 1, C)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + gh*gw, C)
        pos = self.position_embedding
        if interpolate_pos_encoding:
            pos = interpolate_position_embedding(pos, self.cfg.grid_hw, (gh, gw))
        return x + pos

    def forward(self, pixel_values, output_hidden_states=False, output_attentions=False, interpolate_pos_encoding=False):
        x = self.ln_pre(self.embed(pixel_values, interpolate_pos_encoding))
        if output_hidden_states or output_attentions:
            x, hidden_states, attentions = run_blocks(self.blocks, x, False, output_hidden_states, output_attentions)
            tokens = x if self.cfg.attn_pool_queries else self.ln_post(x)  # (B, T, C): every token
            return EncoderOutput(self.head(x), tokens, hidden_states, attentions)
        if self.reads_class_token_alone:
            cls = torch.zeros(x.size(0), dtype=torch.long, device=x.device)  # the image is read off the class token
            return self.proj(self.ln_post(run_blocks_pooled(self.blocks, x, cls, causal=False)))
        x, _, _ = run_blocks(self.blocks, x, False, False, False)
        return self.head(x)

    @property
    def reads_class_token_alone(self) -> bool:
        """OpenAI's head, proj(ln_post(x[:, 0])), reads one token, so the last block can compute it alone."""
        return self.cfg.pool == "tok" and not self.cfg.attn_pool_queries

    def head(self, x):
        """(B, T, C) block outputs -> (B, embed_dim): OpenAI's proj(ln_post(x[:, 0])), or with the options:
        an attentional pooler first, ln_post after the pooling, the mean of the patch tokens."""
        if self.cfg.attn_pool_queries:
            x = self.attn_pool(x)  # (B, queries, embed_dim)
        if self.cfg.final_ln_after_pool:
            return self.proj(self.ln_post(self.pool(x)))
        return self.proj(self.pool(self.ln_post(x)))

    def pool(self, x):
        """(B, T, C) -> (B, C): the first token (the class token), or the mean of the others."""
        return x[:, 0] if self.cfg.pool == "tok" else x[:, 1:].mean(dim=1)

    def patch_tokens(self, pixel_values, interpolate_pos_encoding=False):
        """(B, gh*gw, C): every patch token after the last block and ln_post, the class token left out."""
        if self.cfg.attn_pool_queries:
            raise InputError("this model reads images through an attentional pooler, so its patch tokens have no "
                             "ln_post of their own; use encode_image(..., output_hidden_states=True)")
        x = self.ln_pre(self.embed(pixel_values, interpolate_pos_encoding))
        x, _, _ = run_blocks(self.blocks, x, False, False, False)
        return self.ln_post(x[:, 1:])


ATTN_POOL_LN_EPS = 1e-5


class AttentionalPooler(nn.Module):
    """`queries` learned vectors cross-attend to the image tokens (CoCa, Yu et al. 2022; open_clip's
    attentional_pool): (B, T, width) -> (B, queries, embed_dim).

    Queries and tokens are LayerNorm'd first. The parameters keep nn.MultiheadAttention's layout (separate
    q/k/v matrices, since the queries and the tokens differ in width, and one stacked q/k/v bias) so that
    open_clip's checkpoints map onto them by name.
    """

    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        self.heads = cfg.attn_pool_heads
        self.query = nn.Parameter(torch.empty(cfg.attn_pool_queries, embed_dim))
        # eps 1e-5 whatever the tower's: open_clip builds these two without the tower's norm_kwargs
        self.ln_q = nn.LayerNorm(embed_dim, eps=ATTN_POOL_LN_EPS)
        self.ln_k = nn.LayerNorm(cfg.width, eps=ATTN_POOL_LN_EPS)
        self.q_weight = nn.Parameter(torch.empty(embed_dim, embed_dim))
        self.k_weight = nn.Parameter(torch.empty(embed_dim, cfg.width))
        self.v_weight = nn.Parameter(torch.empty(embed_dim, cfg.width))
        self.qkv_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.proj = Linear(embed_dim, embed_dim)

    def forward(self, x):
        B, T, _ = x.shape
        x, query = self.ln_k(x), self.ln_q(self.query)
        q_bias, k_bias, v_bias = self.qkv_bias.chunk(3)
        n, D = query.shape
        heads = lambda t, rows: t.view(-1, rows, self.heads, D // self.heads).transpose(1, 2)  # noqa: E731
        q = heads(F.linear(query, self.q_weight, q_bias), n).expand(B, -1, -1, -1)  # (B, nh, n, hs)
        k = heads(F.linear(x, self.k_weight, k_bias), T)  # (B, nh, T, hs)
        v = heads(F.linear(x, self.v_weight, v_bias), T)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, n, hs)
        return self.proj(y.transpose(1, 2).reshape(B, n, D))


def interpolate_position_embedding(pos: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Resizes the learned (1 + h*w, C) patch-position grid of `grid` = (h, w) to `size` = (gh, gw), bicubically.

    As transformers does: the class position is kept, the h x w grid is treated as a C-channel image,
    and the original grid is returned unchanged when the size already matches.
    """
    (h, w), (gh, gw) = grid, size
    C = pos.shape[1]
    if (gh, gw) == (h, w):
        return pos
    grid = pos[1:].reshape(1, h, w, C).permute(0, 3, 1, 2)  # (1, C, h, w)
    grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(gh * gw, C)  # (gh*gw, C)
    return torch.cat([pos[:1], grid], dim=0)


# -----------------------------------------------------------------------------
# The text tower: a GPT-style causal transformer read out at the end-of-text token


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        # _weight: skip nn.Embedding's own normal_ init (CLIP.init_weights does it); on the `meta` device that
        # init alone costs ~1 s of lazy imports, half of a cold start.
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width, _weight=torch.empty(cfg.vocab_size, cfg.width))
        self.position_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.blocks = make_blocks(cfg)
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.proj = Linear(cfg.width, embed_dim, bias=cfg.proj_bias)

    def forward(self, input_ids, output_hidden_states=False, output_attentions=False):
        at = self.pool_positions(input_ids)  # (B,): where each text is read out
        causal = self.cfg.causal
        if output_hidden_states or output_attentions:
            x = self.embed(input_ids)
            x, hidden_states, attentions = run_blocks(self.blocks, x, causal, output_hidden_states, output_attentions)
            tokens = self.ln_final(x)
            return EncoderOutput(self.proj(at_positions(tokens, at)), tokens, hidden_states, attentions)
        if causal and self.cfg.pool == "eot":
            # Attention is causal, so no position influences the ones before it: everything after the batch's
            # last end-of-text token can be dropped before the blocks without changing the pooled output. For
            # captions far shorter than 77 tokens this is most of the work.
            input_ids = input_ids[:, : int(at.max()) + 1 if len(at) else 1]  # (an empty batch keeps 1)
        return self.proj(self.ln_final(run_blocks_pooled(self.blocks, self.embed(input_ids), at, causal)))

    def embed(self, input_ids):
        """(B, T) ids -> (B, T, C): token embeddings plus learned absolute positions."""
        return self.token_embedding(input_ids) + self.position_embedding[: input_ids.size(1)]

    def tokens(self, input_ids, skip: int = 0):
        """(B, T, C): every token's features after `layers - skip` blocks, through ln_final.

        skip=1 is the "clip skip" of image-generation pipelines: the penultimate layer's hidden states,
        normalised by the final LayerNorm. Only the blocks needed are run.
        """
        if not 0 <= skip < len(self.blocks):
            raise ValueError(f"skip must be between 0 and {len(self.blocks) - 1} (the number of layers - 1), got {skip}")
        blocks = self.blocks[: len(self.blocks) - skip]
        x, _, _ = run_blocks(blocks, self.embed(input_ids), self.cfg.causal, False, False)
        return self.ln_final(x)

    def pool_positions(self, input_ids) -> torch.Tensor:
        """(B,) where each text is read out: OpenAI's first end-of-text token, or with the pool option, the
        last position (CLIPA, whose bidirectional tower reads the padded sequence's end) or the first."""
        B, T = input_ids.shape
        if self.cfg.pool == "eot":
            return self.eot_positions(input_ids)
        return torch.full((B,), T - 1 if self.cfg.pool == "last" else 0, dtype=torch.long, device=input_ids.device)

    def eot_positions(self, input_ids) -> torch.Tensor:
        """The position of each row's first end-of-text token, where the text is read out.

        OpenAI pools at `input_ids.argmax(-1)`, which is the same position for its vocabulary (49407 is
        the largest id); looking for the token itself also works for vocabularies where it is not.
        """
        is_eot = input_ids == self.cfg.eot_token_id
        if not bool(is_eot.any(dim=-1).all()):
            missing = (~is_eot.any(dim=-1)).nonzero().flatten().tolist()
            raise InputError(
                f"input_ids rows {missing[:10]} have no end-of-text token ({self.cfg.eot_token_id}); the text "
                "embedding is read at that token. Make input_ids with miniclip.tokenize(...)"
            )
        return is_eot.int().argmax(dim=-1)  # argmax returns the first maximum: the first end-of-text token


# -----------------------------------------------------------------------------
# CLIP: both towers, projected into one space and compared by cosine similarity


class CLIP(nn.Module):
    def __init__(self, config: CLIPConfig = CLIPConfig()):
        super().__init__()
        self.config = config
        # OpenAI's RN* checkpoints read images with a ResNet (resnet.py); every other CLIP with a ViT
        image_encoder = ModifiedResNet if isinstance(config.vision, ResNetConfig) else VisionTransformer
        self.visual = image_encoder(config.vision, config.embed_dim)
        self.text = TextTransformer(config.text, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init))  # log of the inverse temperature
        if not self.logit_scale.is_meta:
            self.init_weights()

    @property
    def dtype(self) -> torch.dtype:
        return self.logit_scale.dtype

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @classmethod
    def from_pretrained(cls, name_or_path, *, device=None, dtype=None, revision=None, config=None):
        """Loads a checkpoint: a Hub id ("openai/clip-vit-base-patch32"), a preset name ("ViT-B/32"),
        a local folder in the Hub's layout, or a single weights file. See `miniclip.weights.load`.

        dtype: torch.float32 (default), torch.float16 or torch.bfloat16, or a name for one: "float32", "fp32",
        "float16", "fp16", "half", "bfloat16", "bf16", "torch.float16".
        """
        from .dtypes import as_dtype
        from .weights import load  # weights/ imports this module; import here to avoid the cycle

        dtype = as_dtype(dtype)  # checked before anything is read or downloaded
        return load(name_or_path, device=device, dtype=dtype, revision=revision, config=config)

    def encode_image(self, pixel_values, *, output_hidden_states=False, output_attentions=False,
                     interpolate_pos_encoding=False):
        """(B, 3, H, W) normalised pixels -> (B, embed_dim) image embeddings, not normalised.

        With output_hidden_states or output_attentions, returns an `EncoderOutput` instead.
        """
        self.check_pixels(pixel_values, interpolate_pos_encoding)
        return self.visual(pixel_values, output_hidden_states, output_attentions, interpolate_pos_encoding)

    def encode_text(self, input_ids, *, output_hidden_states=False, output_attentions=False):
        """(B, T) token ids from `miniclip.tokenize` -> (B, embed_dim) text embeddings, not normalised.

        No attention mask is needed for padded batches: attention is causal and the text is read at its
        end-of-text token, so padding after it never reaches the embedding.
        With output_hidden_states or output_attentions, returns an `EncoderOutput` instead.
        """
        self.check_input_ids(input_ids)
        return self.text(input_ids, output_hidden_states, output_attentions)

    def tokenize(self, texts, truncate: bool = False):
        """`miniclip.tokenize` at this model's context length, refused for a model trained on other ids.

        miniclip's tokenizer is OpenAI's BPE; a model whose config names another (CLIPA's BERT WordPiece,
        MetaCLIP 2's XLM-V) computes on any ids, but only on its own tokenizer's are they the right ones.
        """
        from .tokenizer import tokenize

        if self.config.text.tokenizer != OPENAI_TOKENIZER:
            raise InputError(
                f"this model was trained on ids from another tokenizer ({self.config.text.tokenizer}), not the "
                "OpenAI BPE that miniclip implements: tokenize its texts with that tokenizer and pass the ids "
                "to encode_text"
            )
        return tokenize(texts, context_length=self.config.text.context_length, truncate=truncate).to(self.device)

    def encode_image_patches(self, pixel_values, *, interpolate_pos_encoding=False):
        """(B, 3, H, W) pixels -> (B, n_patches, vision width): each patch's token after ln_post, in row-major
        patch order (the class token, which `encode_image` reads, is left out). Not projected."""
        self.check_pixels(pixel_values, interpolate_pos_encoding)
        return self.visual.patch_tokens(pixel_values, interpolate_pos_encoding)

    def encode_text_tokens(self, input_ids, *, clip_skip: int = 0):
        """(B, T) ids -> (B, T, text width): every token's features through ln_final, not projected.

        clip_skip=1 gives the penultimate layer's (the "clip skip" text features that Stable Diffusion
        pipelines condition on: transformers' hidden_states[-2] passed through final_layer_norm).
        """
        self.check_input_ids(input_ids)
        return self.text.tokens(input_ids, clip_skip)

    def forward(self, pixel_values, input_ids):
        """Returns (logits_per_image [n_images, n_texts], logits_per_text [n_texts, n_images])."""
        image = F.normalize(self.encode_image(pixel_values), dim=-1)
        text = F.normalize(self.encode_text(input_ids), dim=-1)
        logits_per_image = self.logit_scale.exp() * image @ text.t()  # scaled cosine similarity
        return logits_per_image, logits_per_image.t()

    # -- input checks at the public boundary: a few comparisons on small tensors, nothing per element
    # of the pixels beyond the dtype and shape.

    def check_pixels(self, pixel_values, interpolate_pos_encoding: bool):
        if not isinstance(pixel_values, torch.Tensor):
            raise InputError(f"pixel_values must be a torch.Tensor (B, 3, H, W), got {type(pixel_values).__name__}")
        if pixel_values.ndim != 4 or pixel_values.size(1) != 3:
            raise InputError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; expected (batch, 3, height, width). "
                "For one image use pixel_values.unsqueeze(0)"
            )
        if not pixel_values.is_floating_point():
            raise InputError(
                f"pixel_values has dtype {pixel_values.dtype}; expected normalised floating-point pixels. "
                "Raw 0-255 images give wrong embeddings: pass them through miniclip.preprocess"
            )
        vision = self.config.vision
        h, w = vision.image_hw if isinstance(vision, VisionConfig) else (vision.image_size, vision.image_size)
        if not interpolate_pos_encoding and tuple(pixel_values.shape[-2:]) != (h, w):
            raise InputError(
                f"pixel_values is {pixel_values.size(2)}x{pixel_values.size(3)}, but this model takes {h}x{w} "
                "(height x width) images. Resize them (miniclip.preprocess does), or pass interpolate_pos_encoding=True"
            )
        self.check_placement("pixel_values", pixel_values, check_dtype=True)

    def check_input_ids(self, input_ids):
        if not isinstance(input_ids, torch.Tensor):
            raise InputError(f"input_ids must be a torch.Tensor (B, T), got {type(input_ids).__name__}")
        if input_ids.ndim != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise InputError(
                f"input_ids has shape {tuple(input_ids.shape)} and dtype {input_ids.dtype}; "
                "expected integer ids of shape (batch, length), as miniclip.tokenize returns"
            )
        cfg = self.config.text
        if input_ids.size(1) > cfg.context_length:
            raise InputError(f"input_ids has {input_ids.size(1)} positions; this model has {cfg.context_length}")
        self.check_placement("input_ids", input_ids, check_dtype=False)  # first: min()/max() need real data
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= cfg.vocab_size):
            raise InputError(
                f"input_ids holds ids from {int(input_ids.min())} to {int(input_ids.max())}; "
                f"the vocabulary has ids 0..{cfg.vocab_size - 1}"
            )

    def check_placement(self, name, tensor, check_dtype: bool):
        if tensor.device != self.device:
            raise InputError(f"{name} is on {tensor.device} but the model is on {self.device}: move one of them")
        if check_dtype and tensor.dtype != self.dtype:
            raise InputError(
                f"{name} has dtype {tensor.dtype} but the model's weights are {self.dtype}: "
                f"use {name}.to({self.dtype})"
            )

    # -- initialisation, for models not loaded from a checkpoint (OpenAI's scheme, clip/model.py)

    @torch.no_grad()
    def init_weights(self):
        if isinstance(self.visual, ModifiedResNet):
            self.visual.init_weights()
        for tower in [self.visual] * isinstance(self.visual, VisionTransformer) + [self.text]:
            w, L = tower.cfg.width, tower.cfg.layers
            attn_std, proj_std, fc_std = w**-0.5, (w**-0.5) * (2 * L) ** -0.5, (2 * w) ** -0.5
            for block in tower.blocks:
                nn.init.normal_(block.attn.qkv.weight, std=attn_std)
                nn.init.zeros_(block.attn.qkv.bias)
                nn.init.normal_(block.attn.proj.weight, std=proj_std)  # scaled down: L residual additions
                nn.init.zeros_(block.attn.proj.bias)
                nn.init.normal_(block.mlp.fc1.weight, std=fc_std)
                nn.init.normal_(block.mlp.fc2.weight, std=proj_std)
            nn.init.normal_(tower.proj.weight, std=w**-0.5)
        if isinstance(self.visual, VisionTransformer):
            nn.init.normal_(self.visual.class_embedding, std=self.config.vision.width**-0.5)
            nn.init.normal_(self.visual.position_embedding, std=self.config.vision.width**-0.5)
            if self.config.vision.attn_pool_queries:  # as nn.MultiheadAttention initialises itself
                pool = self.visual.attn_pool
                nn.init.normal_(pool.query)
                for w in (pool.q_weight, pool.k_weight, pool.v_weight):
                    nn.init.xavier_uniform_(w)
                nn.init.zeros_(pool.qkv_bias)
        if self.text.proj.bias is not None:
            nn.init.zeros_(self.text.proj.bias)
        nn.init.normal_(self.text.token_embedding.weight, std=0.02)
        nn.init.normal_(self.text.position_embedding, std=0.01)
