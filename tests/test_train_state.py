"""Checkpoints of a training run: the model loads in transformers, and a run resumed from a checkpoint
computes bit for bit what the uninterrupted run computes (CPU, same thread count)."""

import pytest
import torch
from compare import assert_close

from miniclip import CLIP, CLIPConfig, TextConfig, VisionConfig, tokenize
from miniclip.train import ShuffledBatches, TrainConfig, Trainer, resume, save_checkpoint, towers

TINY = CLIPConfig(VisionConfig(image_size=32, patch_size=8, width=48, layers=2, heads=4, mlp_width=96),
                  TextConfig(context_length=16, width=32, layers=2, heads=4, mlp_width=64), embed_dim=16)
WORDS = ["cat", "dog", "red car", "tree", "the sea at night", "soup", "three birds", "a bridge", "snow", "a clock"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models on one thread


def tiny_model(seed=0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(TINY)


class Run:
    """A training run on a fixed data set of 20 pairs, 4 per step, with a random 'augmentation' drawn from
    torch's global generator at every step (so that resuming must restore it)."""

    pixels = torch.randn(20, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = tokenize([f"a photo of {WORDS[i % 10]} number {i}" for i in range(20)], context_length=16)

    def __init__(self, model, config=TrainConfig(total_steps=8, warmup_steps=2, lr=1e-3, micro_batches=2)):
        towers.checkpoint_blocks(model)
        self.trainer = Trainer(model, config)

    def train(self, until: int):
        for idx in ShuffledBatches(20, 4, seed=0, start=self.trainer.step, stop=until):
            augmented = self.pixels[idx] + 0.01 * torch.randn(4, 3, 32, 32)
            self.trainer.train_step(augmented, self.ids[idx])


@pytest.mark.parametrize("precision", ["fp32", "fp16"])  # fp16: the grad scaler's state too
def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tmp_path, precision):
    # with accumulation over micro-batches and checkpointed blocks: everything a step can involve
    config = TrainConfig(total_steps=8, warmup_steps=2, lr=1e-3, micro_batches=2, precision=precision)
    torch.manual_seed(123)
    straight = Run(tiny_model(), config)
    straight.train(until=7)
    straight_rng = torch.get_rng_state()

    torch.manual_seed(123)
    first = Run(tiny_model(), config)
    first.train(until=3)
    save_checkpoint(first.trainer, tmp_path / "step-3", extra={"note": "kept"})
    torch.manual_seed(999)  # the generators move on; resume must put them back
    second = Run(tiny_model(seed=1), config)  # other weights, a fresh optimizer: resume replaces them all
    assert resume(second.trainer, tmp_path / "step-3") == {"note": "kept"}
    assert second.trainer.step == 3
    second.train(until=7)

    ours, theirs = second.trainer.model.state_dict(), straight.trainer.model.state_dict()
    assert [k for k in theirs if not torch.equal(ours[k], theirs[k])] == []
    opt, ref = second.trainer.optimizer.state_dict()["state"], straight.trainer.optimizer.state_dict()["state"]
    assert all(torch.equal(opt[i][key], ref[i][key]) for i in ref for key in ref[i])
    assert second.trainer.scaler.state_dict() == straight.trainer.scaler.state_dict()
    assert torch.equal(torch.get_rng_state(), straight_rng)


def test_checkpoint_loads_in_transformers(tmp_path):
    from transformers import CLIPModel

    run = Run(tiny_model())
    run.train(until=2)
    save_checkpoint(run.trainer, tmp_path / "ckpt")
    model = run.trainer.model
    ours = CLIP.from_pretrained(tmp_path / "ckpt")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ours.state_dict().items())
    theirs = CLIPModel.from_pretrained(tmp_path / "ckpt").eval()
    pixels, ids = Run.pixels[:4], Run.ids[:4]
    with torch.no_grad():
        expected = model.eval()(pixels, ids)[0]
        assert_close(theirs(input_ids=ids, pixel_values=pixels).logits_per_image, expected, atol=1e-4, rtol=1e-5,
                     what="transformers on the saved checkpoint")


def test_saving_again_replaces_the_checkpoint(tmp_path):
    run = Run(tiny_model())
    save_checkpoint(run.trainer, tmp_path / "ckpt")
    run.train(until=1)
    save_checkpoint(run.trainer, tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no .tmp or .old left behind
    assert torch.load(tmp_path / "ckpt" / "training_state.pt", weights_only=True)["step"] == 1


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    save_checkpoint(Run(tiny_model()).trainer, tmp_path / "ckpt")
    bigger = CLIP(CLIPConfig(TINY.vision, TextConfig(context_length=16, width=64, layers=2, heads=4, mlp_width=64),
                             embed_dim=16))
    with pytest.raises(ValueError, match="another config"):
        resume(Trainer(bigger), tmp_path / "ckpt")


def test_shuffled_batches_cover_each_epoch_and_resume_at_a_step():
    # 10 examples, 2 ranks of 2: 2 global batches an epoch (2 examples left over, a new pair each epoch)
    ranks = [list(ShuffledBatches(10, 2, seed=5, stop=6, rank=r, world_size=2)) for r in range(2)]
    for epoch in range(3):
        seen = [i for r in range(2) for batch in ranks[r][2 * epoch:2 * epoch + 2] for i in batch]
        assert len(seen) == len(set(seen)) == 8  # every rank's batches disjoint, within an epoch
    assert ranks[0][:2] != ranks[0][2:4]  # a new shuffle each epoch
    assert list(ShuffledBatches(10, 2, seed=5, start=3, stop=6)) == list(ShuffledBatches(10, 2, seed=5, stop=6))[3:]
    assert len(ShuffledBatches(10, 2, start=3, stop=6)) == 3
    with pytest.raises(ValueError):
        ShuffledBatches(10, 6, world_size=2)
