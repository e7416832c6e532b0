"""Training on one process: the optimiser set-up, the schedule and the clamp, and that each thing the step
does for large batches (captions cut short, accumulation, checkpointing, mixed precision) changes memory or
speed and not the gradients; locked towers and BatchNorm training.

Models are small and built from a config with seeded random weights; every comparison of gradients is
between two computations of the same batch on the same weights."""

import copy
import math
import weakref

import pytest
import torch
import torch.nn as nn
from compare import assert_close
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from miniclip import CLIP, CLIPConfig, ResNetConfig, TextConfig, VisionConfig, tokenize
from miniclip.resnet import BatchNorm
from miniclip.train import (
    TrainConfig,
    Trainer,
    clamp_logit_scale,
    clip_loss,
    param_groups,
    save_model,
    towers,
    trim_padding,
    warmup_cosine,
)

TINY = CLIPConfig(VisionConfig(image_size=32, patch_size=8, width=48, layers=2, heads=4, mlp_width=96),
                  TextConfig(context_length=16, width=32, layers=2, heads=4, mlp_width=64), embed_dim=16)
CAPTIONS = ["a cat", "a photo of two dogs in the snow", "a red car", "an empty street", "the sea at night",
            "a bowl of soup", "three birds on a wire", "a tall tree"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models on one thread


def tiny_model(config=TINY, seed=0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(config)


def batch(config=TINY, n=8, seed=0):
    size = config.vision.image_size
    pixels = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return pixels, tokenize((CAPTIONS * n)[:n], context_length=config.text.context_length)


def grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(ours: dict, reference: dict, rtol: float, what: str):
    assert ours.keys() == reference.keys()
    for name in reference:
        assert_close(ours[name], reference[name], atol=rtol * reference[name].abs().max().item(), rtol=rtol,
                     what=f"{what}: {name}")


# -----------------------------------------------------------------------------
# The optimiser set-up


def test_weight_decay_skips_gains_biases_embeddings_and_logit_scale():
    model = tiny_model()
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = param_groups(model, weight_decay=0.2)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.2, 0.0)
    decayed = {names[id(p)].split(".", 2)[-1] if ".blocks." in names[id(p)] else names[id(p)] for p in decay["params"]}
    # the matrices (and the patch embedding's kernel, a linear map of each patch), nothing else
    assert decayed == {"0.attn.qkv.weight", "0.attn.proj.weight", "0.mlp.fc1.weight", "0.mlp.fc2.weight",
                       "1.attn.qkv.weight", "1.attn.proj.weight", "1.mlp.fc1.weight", "1.mlp.fc2.weight",
                       "visual.patch_embed.weight", "visual.proj.weight", "text.proj.weight"}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"logit_scale", "visual.class_embedding", "visual.position_embedding", "text.token_embedding.weight",
            "text.position_embedding", "visual.ln_pre.weight", "visual.ln_post.bias", "text.blocks.0.ln_1.weight",
            "text.blocks.1.attn.qkv.bias"} <= skipped
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_warmup_then_cosine_worked_example():
    # warm-up 4 steps: 1/4, 2/4, 3/4, 4/4 of the peak; then half a cosine over the 4 steps left
    assert [warmup_cosine(s, 4, 8) for s in range(9)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0])


def test_trainer_follows_the_schedule_and_clamps_the_temperature():
    model = tiny_model()
    trainer = Trainer(model, TrainConfig(total_steps=8, warmup_steps=4, lr=1e-3))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100) - 1e-6)  # a step's increase takes it past ln 100
    pixels, ids = batch()
    lrs = []
    for _ in range(3):
        lrs.append(trainer.lr)
        trainer.train_step(pixels, ids)
        assert trainer.optimizer.param_groups[0]["lr"] == lrs[-1]
        assert 0 <= model.logit_scale.item() <= math.log(100)
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4])
    with torch.no_grad():
        model.logit_scale.fill_(-3.0)
    clamp_logit_scale(model)
    assert model.logit_scale.item() == 0.0


# -----------------------------------------------------------------------------
# Same gradients, less work or memory


def loss_and_grads(model, pixels, ids, config: TrainConfig):
    trainer = Trainer(model, config)
    loss = trainer.backward(pixels, ids)
    return loss, grads(model)


def test_cutting_captions_after_the_last_end_of_text_changes_no_gradient():
    pixels, ids = batch()
    short = trim_padding(ids, TINY.text)
    assert short.shape == (8, 10) and (short == ids[:, :10]).all()  # SOT "a photo of two dogs in the snow" EOT
    full_loss, full = loss_and_grads(tiny_model(), pixels, ids, TrainConfig(trim_padding=False))
    short_loss, cut = loss_and_grads(tiny_model(), pixels, ids, TrainConfig(trim_padding=True))
    assert_close(short_loss, full_loss, atol=0, rtol=1e-6, what="loss")
    assert_same_grads(cut, full, 1e-5, "trimmed vs 16 positions")
    # the position rows after the last end-of-text token get no gradient either way
    assert (full["text.position_embedding"][10:] == 0).all()


def test_trim_padding_leaves_bidirectional_towers_alone():
    ids = tokenize(["a cat"], context_length=16)
    assert trim_padding(ids, TextConfig(causal=False)).shape == (1, 16)
    assert trim_padding(ids, TextConfig(pool="last")).shape == (1, 16)
    assert trim_padding(ids, TextConfig()).shape == (1, 4)


@pytest.mark.parametrize("micro_batches", [2, 3, 4])
def test_accumulation_keeps_the_whole_batch_contrastive(micro_batches):
    # The loss and the gradients of the whole batch, not of micro-batches with fewer negatives each (3: parts
    # of unequal size, as a batch that lost an unreadable image is cut)
    pixels, ids = batch()
    full_loss, full = loss_and_grads(tiny_model(), pixels, ids, TrainConfig())
    loss, accumulated = loss_and_grads(tiny_model(), pixels, ids, TrainConfig(micro_batches=micro_batches))
    assert_close(loss, full_loss, atol=0, rtol=1e-6, what="loss")
    assert_same_grads(accumulated, full, 1e-5, f"{micro_batches} micro-batches vs one batch")
    # plain accumulation (a loss per micro-batch) would be another loss altogether
    model = tiny_model()
    halves = [clip_loss(model.encode_image(p), model.encode_text(i), model.logit_scale).item()
              for p, i in zip(pixels.chunk(2), ids.chunk(2))]
    assert abs(sum(halves) / 2 - full_loss.item()) > 0.1


class PeakMemory(TorchDispatchMode):
    """Bytes of CPU tensor storage alive at once, at most, for the ops run under it (forward, and backward,
    which runs on the calling thread on CPU): each storage an op creates counts until it is freed. (Views and
    in-place results share an input's storage: not new.)"""

    def __init__(self):
        super().__init__()
        self.live, self.now, self.peak = {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                if storage.data_ptr() not in self.live and storage.data_ptr() not in inputs and storage.nbytes():
                    self.live[storage.data_ptr()] = storage.nbytes()
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(storage, self.free, storage.data_ptr())
        return out

    def free(self, key):
        self.now -= self.live.pop(key)


MEDIUM = CLIPConfig(VisionConfig(image_size=64, patch_size=8, width=64, layers=4, heads=4, mlp_width=256),
                    TextConfig(context_length=16, width=64, layers=4, heads=4, mlp_width=256), embed_dim=32)


def test_gradient_checkpointing_same_gradients_less_memory():
    pixels, ids = batch(MEDIUM, n=64)

    def measured(checkpointed: bool):
        model = tiny_model(MEDIUM)
        if checkpointed:
            towers.checkpoint_blocks(model)
        trainer = Trainer(model, TrainConfig())
        with PeakMemory() as memory:
            loss = trainer.backward(pixels, ids)
        return loss, grads(model), memory.peak

    loss, plain, plain_peak = measured(False)
    checkpointed_loss, checkpointed, checkpointed_peak = measured(True)
    # the same kernels on the same inputs, run again: bit for bit
    assert checkpointed_loss == loss
    assert_same_grads(checkpointed, plain, 0, "checkpointed vs plain")
    print(f"peak tensor memory of forward + backward: {plain_peak / 2**20:.1f} MB plain, "
          f"{checkpointed_peak / 2**20:.1f} MB checkpointed")
    assert checkpointed_peak < 0.6 * plain_peak


def test_checkpointing_can_be_undone_and_leaves_inference_alone():
    model = tiny_model()
    pixels, _ = batch()
    with torch.no_grad():
        before = model.encode_image(pixels)
    towers.checkpoint_blocks(model)
    assert all("forward" in vars(b) for b in model.visual.blocks)
    with torch.no_grad():
        assert torch.equal(model.encode_image(pixels), before)
    towers.checkpoint_blocks(model, enabled=False)
    assert not any("forward" in vars(b) for b in [*model.visual.blocks, *model.text.blocks])
    assert model.state_dict().keys() == tiny_model().state_dict().keys()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_keeps_fp32_weights(precision):
    pixels, ids = batch()
    exact, _ = loss_and_grads(tiny_model(), pixels, ids, TrainConfig())
    model = tiny_model()
    trainer = Trainer(model, TrainConfig(precision=precision, warmup_steps=1))
    losses = [trainer.train_step(pixels, ids) for _ in range(3)]
    assert losses[0].dtype == torch.float32 and losses[0].item() == pytest.approx(exact.item(), rel=2e-2)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    assert not torch.equal(model.visual.proj.weight, tiny_model().visual.proj.weight)  # it trained


def test_fp16_weights_are_refused():
    with pytest.raises(ValueError, match="train fp32 weights"):
        Trainer(tiny_model().half())


# -----------------------------------------------------------------------------
# Locked towers (LiT)


def test_locked_tower_gets_no_gradient_and_does_not_change():
    model = tiny_model()
    towers.lock(model.visual)
    before = copy.deepcopy(model.state_dict())
    trainer = Trainer(model, TrainConfig(warmup_steps=1, lr=1e-2))
    pixels, ids = batch()
    trainer.backward(pixels, ids)
    assert all(p.grad is None for p in model.visual.parameters())
    assert all(p.grad is not None for p in model.text.parameters())
    trainer.update()
    trainer.train_step(pixels, ids)
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("visual."))
    assert not torch.equal(after["text.proj.weight"], before["text.proj.weight"])


def test_lock_all_but_the_last_blocks():
    model = tiny_model()
    towers.lock(model.text, unlocked_blocks=1)
    trainable = {n for n, p in model.text.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.text.named_parameters()
                         if n.startswith(("blocks.1.", "ln_final.", "proj."))}
    before = copy.deepcopy(model.state_dict())
    Trainer(model, TrainConfig(warmup_steps=1, lr=1e-2)).train_step(*batch())
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert {k for k in changed if k.startswith("text.")} == {"text." + n for n in trainable}
    with pytest.raises(ValueError, match="has 2 blocks"):
        towers.lock(model.visual, unlocked_blocks=3)


# -----------------------------------------------------------------------------
# BatchNorm training (the ResNet towers)

# heads 64 wide, as OpenAI's layout (the one that can describe a ResNet CLIP) requires
TINY_RESNET = CLIPConfig(ResNetConfig(image_size=64, layers=(1, 1, 1, 1), width=8),
                         TextConfig(context_length=16, width=64, layers=1, heads=1, mlp_width=128), embed_dim=16)


def test_resnet_batchnorm_trains_and_keeps_its_names(tmp_path):
    model = tiny_model(TINY_RESNET)
    with torch.no_grad():  # running statistics that are not those of the batch
        for m in model.modules():
            if isinstance(m, BatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    reference = copy.deepcopy(model)
    pixels, ids = batch(TINY_RESNET)
    names = model.state_dict().keys()
    towers.train_batchnorm(model)
    assert model.state_dict().keys() == names
    assert not any(type(m) is BatchNorm for m in model.modules())
    # eval mode: the running statistics, exactly as before
    with torch.no_grad():
        assert torch.equal(model.eval().encode_image(pixels), reference.encode_image(pixels))
        # train mode: the batch's statistics, and the running ones move towards them
        assert not torch.allclose(model.train().encode_image(pixels), reference.encode_image(pixels))
    assert not torch.equal(model.visual.bn1.running_mean, reference.visual.bn1.running_mean)
    trainer = Trainer(model, TrainConfig(warmup_steps=1))
    trainer.train_step(pixels, ids)
    assert model.visual.bn1.weight.grad is None and not torch.equal(model.visual.bn1.weight, reference.visual.bn1.weight)
    # saved and read back (OpenAI's layout: transformers has no ResNet CLIP) as the inference model
    save_model(model, tmp_path)
    loaded = CLIP.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(pixels), model.eval().encode_image(pixels))


def test_locked_resnet_keeps_its_statistics():
    model = tiny_model(TINY_RESNET)
    towers.train_batchnorm(model)
    towers.lock(model.visual)  # back to inference-only BatchNorm
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.visual.modules())
    before = copy.deepcopy(model.visual.state_dict())
    Trainer(model, TrainConfig(warmup_steps=1)).train_step(*batch(TINY_RESNET))
    assert all(torch.equal(v, before[k]) for k, v in model.visual.state_dict().items())


def test_accumulation_updates_batchnorm_statistics_once_per_micro_batch():
    # The cached pass (no autograd) must leave the running statistics alone: the second pass updates them,
    # once per micro-batch, as two forward passes in train mode would
    model = tiny_model(TINY_RESNET)
    towers.train_batchnorm(model)
    expected = copy.deepcopy(model).train()
    pixels, ids = batch(TINY_RESNET)
    with torch.no_grad():
        for part in pixels.chunk(2):
            expected.encode_image(part)
    Trainer(model, TrainConfig(micro_batches=2)).backward(pixels, ids)
    for name, tensor in expected.visual.state_dict().items():
        assert torch.equal(model.visual.state_dict()[name], tensor), name
