"""OpenAI's modified ResNet, the image encoder of CLIP's RN50, RN101, RN50x4, RN50x16 and RN50x64.

A ResNet-50-style bottleneck network (He et al. 2016) with the three changes OpenAI describes in the
paper (section 2.4) and in clip/model.py `ModifiedResNet`:
1. the stem is three 3x3 convolutions (the first with stride 2) and a 2x2 average pool, instead of one
   7x7 convolution and a max pool (He et al. 2019, "Bag of Tricks", ResNet-C);
2. downsampling is anti-aliased (Zhang 2019, "Making Convolutional Networks Shift-Invariant Again"): a
   stride-2 block average-pools 2x2 and then convolves with stride 1, instead of striding a convolution;
3. the image is pooled by attention instead of by averaging: the mean of the last feature map, plus a
   learned position embedding, is the one query that attends over every position, and its projected
   output is the image embedding.

BatchNorm here is inference-only (running statistics, never batch statistics): CLIP's released
encoders are used frozen, and a module that cannot switch to batch statistics cannot give other numbers
after a stray `model.train()`.

Parameter names follow OpenAI's (conv1, bn1, layer1.0.conv2, attnpool.q_proj, ...) so that the conversion
table in `miniclip.weights.openai` is almost a plain copy; the activations are modules (relu1, relu2, relu3)
as in OpenAI's model, so each one can be hooked.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import BOTTLENECK_EXPANSION, ResNetConfig
from .errors import InputError

BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default, which OpenAI's model uses


class BatchNorm(nn.Module):
    """BatchNorm2d at inference: y = (x - running_mean) / sqrt(running_var + eps) * weight + bias, per channel.

    Unlike nn.BatchNorm2d it keeps no `num_batches_tracked` counter: that counts training steps and changes
    nothing at inference. OpenAI's state dicts carry it; their table lists it as ignored.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=BN_EPS)


def conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    # no bias: the BatchNorm that follows every convolution has its own
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)


def pool(stride: int) -> nn.Module:
    return nn.AvgPool2d(stride) if stride > 1 else nn.Identity()


class Downsample(nn.Module):
    """The shortcut of a block that changes the shape: average pool, then a 1x1 convolution and BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.pool = pool(stride)
        self.conv = conv(in_channels, out_channels, 1)
        self.bn = BatchNorm(out_channels)

    def forward(self, x):
        return self.bn(self.conv(self.pool(x)))


class Bottleneck(nn.Module):
    """1x1 conv (narrow) -> 3x3 conv -> [2x2 average pool] -> 1x1 conv (4x wider), plus a shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        out_channels = channels * BOTTLENECK_EXPANSION
        self.conv1, self.bn1, self.relu1 = conv(in_channels, channels, 1), BatchNorm(channels), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = conv(channels, channels, 3), BatchNorm(channels), nn.ReLU()
        self.pool = pool(stride)  # anti-aliasing: average, then convolve with stride 1
        self.conv3, self.bn3 = conv(channels, out_channels, 1), BatchNorm(out_channels)
        changes_shape = stride > 1 or in_channels != out_channels
        self.downsample = Downsample(in_channels, out_channels, stride) if changes_shape else None
        self.relu3 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.pool(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + shortcut)


class AttentionPool(nn.Module):
    """Multi-head attention from one query, the mean of the feature map, over [mean, every position].

    OpenAI runs full self-attention over all 1 + h*w tokens and keeps the first output; only the first
    query matters for it, so only that one is computed here (same numbers, tested).
    """

    def __init__(self, grid_size: int, width: int, heads: int, embed_dim: int):
        super().__init__()
        self.heads = heads
        self.position_embedding = nn.Parameter(torch.empty(grid_size**2 + 1, width))
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.c_proj = nn.Linear(width, embed_dim)

    def forward(self, x):
        x = x.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # (B, 1 + h*w, C): the mean token first
        x = x + self.position_embedding.to(x.dtype)
        B, T, C = x.shape
        hs = C // self.heads
        q = self.q_proj(x[:, :1]).view(B, 1, self.heads, hs).transpose(1, 2)  # (B, nh, 1, hs)
        k = self.k_proj(x).view(B, T, self.heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.v_proj(x).view(B, T, self.heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, 1, hs)
        return self.c_proj(y.reshape(B, C))  # heads re-assembled, projected to (B, embed_dim)


class ModifiedResNet(nn.Module):
    def __init__(self, cfg: ResNetConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        # the stem: (B, 3, H, W) -> (B, w, H/4, W/4)
        self.conv1, self.bn1, self.relu1 = conv(3, w // 2, 3, stride=2), BatchNorm(w // 2), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = conv(w // 2, w // 2, 3), BatchNorm(w // 2), nn.ReLU()
        self.conv3, self.bn3, self.relu3 = conv(w // 2, w, 3), BatchNorm(w), nn.ReLU()
        self.avgpool = nn.AvgPool2d(2)
        # four stages; each but the first halves the resolution in its first block. (B, 32w, H/32, W/32) out
        self.layer1 = self.stage(w, w, cfg.layers[0], stride=1)
        self.layer2 = self.stage(4 * w, 2 * w, cfg.layers[1], stride=2)
        self.layer3 = self.stage(8 * w, 4 * w, cfg.layers[2], stride=2)
        self.layer4 = self.stage(16 * w, 8 * w, cfg.layers[3], stride=2)
        self.attnpool = AttentionPool(cfg.grid_size, cfg.feature_width, cfg.heads, embed_dim)

    @staticmethod
    def stage(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
        out_channels = channels * BOTTLENECK_EXPANSION
        return nn.Sequential(
            Bottleneck(in_channels, channels, stride),
            *(Bottleneck(out_channels, channels, 1) for _ in range(blocks - 1)),
        )

    def forward(self, pixel_values, output_hidden_states=False, output_attentions=False,
                interpolate_pos_encoding=False):
        if output_hidden_states or output_attentions or interpolate_pos_encoding:
            raise InputError(
                "the ResNet image encoder has no transformer hidden states, attention maps or position "
                "interpolation; those options are for the ViT checkpoints"
            )
        x = self.relu1(self.bn1(self.conv1(pixel_values)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.avgpool(self.relu3(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)

    def patch_tokens(self, pixel_values, interpolate_pos_encoding=False):
        raise InputError("the ResNet image encoder has no patch tokens; encode_image_patches needs a ViT checkpoint")

    @torch.no_grad()
    def init_weights(self):
        """OpenAI's scheme (clip/model.py): convolutions keep PyTorch's default initialisation."""
        std = self.cfg.feature_width**-0.5
        nn.init.normal_(self.attnpool.position_embedding, std=std)
        for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(proj.weight, std=std)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                nn.init.zeros_(block.bn3.weight)  # each block starts as the identity (Goyal et al. 2017)
