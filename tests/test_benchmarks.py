"""The benchmark's FLOP count and matmul-bound arithmetic, against answers worked out by hand: every
"fraction of the machine" figure in README rests on them."""

import pytest
from benchmarks.model import Matmul, bound_seconds, faster, flops, image_flops, text_matmuls

from miniclip import PRESETS

B32 = PRESETS["ViT-B/32"]


def test_vit_b32_flops_by_hand():
    # A plain ViT-B/32 on one 224x224 image: 7 x 7 = 49 patches of 3 x 32 x 32 = 3072 values, 50 tokens
    # (with the class token), width 768, MLP 3072, 12 blocks, projection to 512. A multiply-add is 2 FLOPs.
    patch_embedding = 2 * 49 * 3072 * 768
    block = (2 * 50 * 768 * 2304  # q, k, v
             + 2 * 2 * 50 * 50 * 768  # q k^T and (attention) v, all 12 heads
             + 2 * 50 * 768 * 768  # output projection
             + 2 * 2 * 50 * 768 * 3072)  # fc1 and fc2
    assert image_flops(B32, pooled=False) == patch_embedding + 12 * block + 2 * 768 * 512 == 8_817_623_040
    # miniclip's last block: q, k, v for all 50 tokens, everything else for the class token alone
    last = 2 * 50 * 768 * 2304 + 2 * 2 * 50 * 768 + 2 * 768 * 768 + 2 * 2 * 768 * 3072
    assert image_flops(B32) == patch_embedding + 11 * block + last + 2 * 768 * 512


def test_text_flops_scale_with_the_batch():
    one = flops(text_matmuls(B32, 1, 77))
    assert flops(text_matmuls(B32, 64, 77)) == 64 * one
    block = 2 * 77 * 512 * 1536 + 2 * 2 * 77 * 77 * 512 + 2 * 77 * 512 * 512 + 2 * 2 * 77 * 512 * 2048
    last = 2 * 77 * 512 * 1536 + 2 * 2 * 77 * 512 + 2 * 512 * 512 + 2 * 2 * 512 * 2048
    assert one == 11 * block + last + 2 * 512 * 512


def test_the_bound_is_each_shape_at_its_measured_speed():
    # 5 timed (2x3 @ 3x4) products at 1 us each (fastest) or 2 us (median): 48 FLOPs each, 48 MFLOP/s at best;
    # an untimed (2x3 @ 3x2) product, 24 FLOPs, counts at the best speed measured for any shape
    matmuls = [Matmul(2, 3, 4, 5), Matmul(2, 3, 2, 1, timed=False)]
    times = {(2, 3, 4): (1e-6, 2e-6)}
    assert bound_seconds(matmuls, times) == pytest.approx(5e-6 + 0.5e-6)
    assert bound_seconds(matmuls, times, statistic=1) == pytest.approx(10e-6 + 1e-6)


def test_the_bound_takes_the_better_of_its_timings():
    # timed before and after the encoders: per shape, the smaller fastest and the smaller median, separately
    before = {(2, 3, 4): (1.0, 3.0), (4, 3, 2): (5.0, 6.0)}
    after = {(2, 3, 4): (2.0, 2.5), (4, 3, 2): (4.0, 7.0)}
    assert faster(before, after) == {(2, 3, 4): (1.0, 2.5), (4, 3, 2): (4.0, 6.0)}
