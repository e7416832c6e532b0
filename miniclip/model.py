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

This is the plain model: every output (embeddings, hidden states, attention maps, patch tokens, clip-skip
features) is computed by the same modules, so a change to `Attention` or `Block` changes all of them, and
PyTorch's tools (torch.export, ONNX, torch.compile, quantisation, autocast, hooks) see ordinary modules.
`miniclip.load` adds the inference speed-ups of `miniclip/speedups.py`, which step aside by themselves
wherever they could change what a user sees.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import OPENAI_TOKENIZER, CLIPConfig, ResNetConfig, TextConfig, VisionConfig
from .errors import InputError
from .resnet import ModifiedResNet

# -----------------------------------------------------------------------------
# Shared layers


QUICK_GELU_SCALE = 1.702  # makes x * sigmoid(a x) closest to x * Phi(x) (Hendrycks & Gimpel 2016, section 2)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the sigmoid approximation of GELU that OpenAI trained with."""

    def forward(self, x):
        return x * torch.sigmoid(QUICK_GELU_SCALE * x)


def activation(name: str) -> nn.Module:
    """One of config.ACTIVATIONS as a module (so that post-activation neurons have a hook point): OpenAI's
    quick_gelu, exact GELU, or GELU's tanh approximation (open_clip's act_kwargs {"approximate": "tanh"},
    transformers' "gelu_pytorch_tanh")."""
    if name == "quick_gelu":
        return QuickGELU()
    return nn.GELU(approximate="tanh" if name == "gelu_tanh" else "none")


class LayerScale(nn.Module):
    """x * gamma, one learned scale per channel on a residual branch (Touvron et al. 2021, CaiT)."""

    def __init__(self, width: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection.

    Returns the output and, when asked for (need_weights), the attention probabilities. Two computations
    of the same softmax(q k^T / sqrt(hs)) v sit side by side (tests/test_inspect.py checks they agree):
    the fused `scaled_dot_product_attention` kernel, which never materialises the (T, T) matrix, and the
    formula written out, which runs only when the probabilities are wanted.
    """

    def __init__(self, width: int, heads: int, qk_norm: bool = False, eps: float = 1e-5):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)  # q, k and v stacked along the output dimension
        self.proj = nn.Linear(width, width)
        if qk_norm:  # option: each head's queries and keys LayerNorm'd, bounding the attention logits
            self.ln_q = nn.LayerNorm(width // heads, eps=eps)
            self.ln_k = nn.LayerNorm(width // heads, eps=eps)
        self.qk_norm = qk_norm

    def forward(self, x: torch.Tensor, causal: bool = False, need_weights: bool = False):
        """x (B, T, C) -> (B, T, C), and the probabilities (B, nh, T, T) if need_weights, else None."""
        B, T, C = x.shape
        # (B, T, 3C) -> (B, T, 3, nh, hs) -> (3, B, nh, T, hs)
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.qk_norm:
            q, k = self.ln_q(q), self.ln_k(k)
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) * (q.size(-1) ** -0.5)  # (B, nh, T, T)
            if causal:  # position t attends to positions 0..t
                future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
                scores = scores.masked_fill(future, float("-inf"))
            # softmax in fp32, as transformers' eager path does, so fp16 probabilities sum to one
            weights = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
            y = weights @ v
        else:
            y, weights = F.scaled_dot_product_attention(q, k, v, is_causal=causal), None
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, nh, T, hs) -> (B, T, C): re-assemble the heads
        return self.proj(y), weights


class MLP(nn.Module):
    def __init__(self, width: int, mlp_width: int, activation_name: str):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_width)
        self.act = activation(activation_name)
        self.fc2 = nn.Linear(mlp_width, width)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


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

    def forward(self, x, causal: bool = False, need_weights: bool = False):
        """(B, T, C) -> (B, T, C), and the attention probabilities (or None)."""
        a, weights = self.attn(self.ln_1(x), causal, need_weights)
        x = x + self.ls_1(a)
        x = x + self.ls_2(self.mlp(self.ln_2(x)))
        return x, weights


def make_blocks(cfg: VisionConfig | TextConfig) -> nn.ModuleList:
    return nn.ModuleList(Block(cfg) for _ in range(cfg.layers))


def run_blocks(blocks, x, causal: bool, output_hidden_states: bool = False, output_attentions: bool = False):
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


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        # patch x patch squares, each embedded by the same linear map: a convolution whose stride is its
        # kernel, (B, 3, H, W) -> (B, width, H // patch, W // patch), pixels past the last whole patch ignored
        self.patch_embed = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
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
        self.proj = nn.Linear(head_width, embed_dim, bias=False)

    def forward(self, pixel_values, output_hidden_states=False, output_attentions=False, interpolate_pos_encoding=False):
        """(B, 3, H, W) -> (B, embed_dim), or an EncoderOutput when intermediates are asked for."""
        x = self.ln_pre(self.embed(pixel_values, interpolate_pos_encoding))  # (B, 1 + gh*gw, C)
        x, hidden_states, attentions = run_blocks(self.blocks, x, False, output_hidden_states, output_attentions)
        embeds = self.head(x)
        if not (output_hidden_states or output_attentions):
            return embeds
        tokens = x if self.cfg.attn_pool_queries else self.ln_post(x)  # (B, T, C): every token
        return EncoderOutput(embeds, tokens, hidden_states, attentions)

    def embed(self, pixel_values, interpolate_pos_encoding: bool = False):
        """(B, 3, H, W) -> (B, 1 + gh*gw, C): the class token, then each patch, plus learned positions."""
        x = self.patch_embed(pixel_values)  # (B, C, gh, gw)
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # (B, gh*gw, C)
        cls = self.class_embedding.to(x.dtype).expand(x.size(0), 1, -1)  # (B, 1, C)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + gh*gw, C)
        pos = self.position_embedding
        if interpolate_pos_encoding:
            pos = interpolate_position_embedding(pos, self.cfg.grid_hw, (gh, gw))
        return x + pos

    def head(self, x):
        """(B, T, C) block outputs -> (B, embed_dim): OpenAI's proj(ln_post(x[:, 0])), or with the options:
        an attentional pooler first, the mean of the patch tokens (each LayerNorm'd first, as open_clip does,
        unless final_ln_after_pool)."""
        if self.cfg.attn_pool_queries:
            x = self.attn_pool(x)  # (B, queries, embed_dim)
        if self.cfg.pool == "avg" and not self.cfg.final_ln_after_pool:
            return self.proj(self.pool(self.ln_post(x)))
        return self.proj(self.ln_post(self.pool(x)))

    def pool(self, x):
        """(B, T, C) -> (B, C): the first token (the class token), or the mean of the others."""
        return x[:, 0] if self.cfg.pool == "tok" else x[:, 1:].mean(dim=1)

    def patch_tokens(self, pixel_values, interpolate_pos_encoding=False):
        """(B, gh*gw, C): every patch token after the last block and ln_post, the class token left out."""
        if self.cfg.attn_pool_queries:
            raise InputError("this model reads images through an attentional pooler, so its patch tokens have no "
                             "ln_post of their own; use encode_image(..., output_hidden_states=True)")
        x = self.ln_pre(self.embed(pixel_values, interpolate_pos_encoding))
        x, _, _ = run_blocks(self.blocks, x, causal=False)
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
        self.proj = nn.Linear(embed_dim, embed_dim)

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
        self.proj = nn.Linear(cfg.width, embed_dim, bias=cfg.proj_bias)

    def forward(self, input_ids, output_hidden_states=False, output_attentions=False):
        """(B, T) ids -> (B, embed_dim), or an EncoderOutput when intermediates are asked for.

        No attention mask is needed for padded batches: attention is causal and the text is read at its
        end-of-text token, so the padding after it never reaches the embedding.
        """
        x = self.embed(input_ids)  # (B, T, C)
        x, hidden_states, attentions = run_blocks(self.blocks, x, self.cfg.causal, output_hidden_states,
                                                  output_attentions)
        tokens = self.ln_final(x)
        embeds = self.proj(self.pool(tokens, input_ids))
        if not (output_hidden_states or output_attentions):
            return embeds
        return EncoderOutput(embeds, tokens, hidden_states, attentions)

    def embed(self, input_ids):
        """(B, T) ids -> (B, T, C): token embeddings plus learned absolute positions."""
        return self.token_embedding(input_ids) + self.position_embedding[: input_ids.size(1)]

    def pool(self, tokens, input_ids):
        """(B, T, C) -> (B, C): each text's features at OpenAI's first end-of-text token, or with the pool
        option, at the last position (CLIPA, whose bidirectional tower reads the padded sequence's end) or
        the first."""
        if self.cfg.pool == "eot":
            return tokens[torch.arange(tokens.size(0), device=tokens.device), self.eot_positions(input_ids)]
        return tokens[:, -1] if self.cfg.pool == "last" else tokens[:, 0]

    def eot_positions(self, input_ids) -> torch.Tensor:
        """(B,) the position of each row's first end-of-text token, where the text is read out.

        OpenAI pools at `input_ids.argmax(-1)`, which is the same position for its vocabulary (49407 is
        the largest id); looking for the token itself also works for vocabularies where it is not. A row
        without one reads position 0: `CLIP.encode_text` refuses such rows before they get here.
        """
        return (input_ids == self.cfg.eot_token_id).int().argmax(dim=-1)  # argmax returns the first maximum

    def tokens(self, input_ids, skip: int = 0):
        """(B, T, C): every token's features after `layers - skip` blocks, through ln_final.

        skip=1 is the "clip skip" of image-generation pipelines: the penultimate layer's hidden states,
        normalised by the final LayerNorm. Only the blocks needed are run.
        """
        if not 0 <= skip < len(self.blocks):
            raise ValueError(f"skip must be between 0 and {len(self.blocks) - 1} (the number of layers - 1), got {skip}")
        blocks = self.blocks[: len(self.blocks) - skip]
        x, _, _ = run_blocks(blocks, self.embed(input_ids), self.cfg.causal)
        return self.ln_final(x)


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

        Returns the plain model, in eval mode; `miniclip.load` returns it with the inference speed-ups
        (`miniclip.speedups.apply`), which give the same numbers to fp32 rounding.

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
    # of the pixels beyond the dtype and shape. Checks of the ids' values are skipped while torch.export,
    # torch.compile or torch.jit.trace records the model: a graph has no Python branches on data.

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
        if is_traced(input_ids) or not input_ids.numel():
            return  # the checks below read the ids' values, which a traced graph cannot branch on
        if int(input_ids.min()) < 0 or int(input_ids.max()) >= cfg.vocab_size:
            raise InputError(
                f"input_ids holds ids from {int(input_ids.min())} to {int(input_ids.max())}; "
                f"the vocabulary has ids 0..{cfg.vocab_size - 1}"
            )
        if cfg.pool == "eot":
            missing = (input_ids != cfg.eot_token_id).all(dim=-1)
            if bool(missing.any()):
                raise InputError(
                    f"input_ids rows {missing.nonzero().flatten().tolist()[:10]} have no end-of-text token "
                    f"({cfg.eot_token_id}); the text embedding is read at that token. Make input_ids with "
                    "miniclip.tokenize(...)"
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


def is_traced(x) -> bool:
    """Whether `x` is being recorded into a graph rather than computed: a tensor without values (the fake
    tensors of torch.export), or a tracer at work (torch.compile and torch.export set is_compiling)."""
    return type(x) is not torch.Tensor or torch.compiler.is_compiling() or torch.jit.is_tracing()
