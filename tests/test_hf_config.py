"""transformers' config.json: every field read, known to be without effect, or refused by name.

The options transformers' CLIP has (activations, LayerNorm eps, head width) are compared with CLIPModel itself,
with random perturbed weights (tests/checkpoints.py), to 1e-5.
"""

import json

import pytest
import torch
from checkpoints import reference_model, write_checkpoint
from compare import assert_close

from miniclip import CLIP
from miniclip.errors import CheckpointError

SMALL = dict(
    vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
                       image_size=32, patch_size=16),
    text_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6),
    projection_dim=16,
)


def with_towers(**tower_fields):
    return {k: ({**v, **tower_fields} if k.endswith("_config") else v) for k, v in SMALL.items()}


@pytest.mark.parametrize("case", [
    dict(hidden_act="gelu"),
    dict(hidden_act="gelu_pytorch_tanh"),
    dict(hidden_act="gelu_new"),
    dict(hidden_act="gelu", layer_norm_eps=1e-6),
    dict(hidden_act="quick_gelu", layer_norm_eps=0.1),  # large enough that a dropped eps shows
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_transformers_options_match_clipmodel(case, tmp_path):
    ref = reference_model(with_towers(**case), seed=2)  # 8-wide heads: only config.json can say so
    folder = write_checkpoint(ref, tmp_path / "m", weights=("model.safetensors",), tokenizer_files=False)
    ours = CLIP.from_pretrained(folder)
    g = torch.Generator().manual_seed(0)
    pixels, ids = torch.randn(2, 3, 32, 32, generator=g), torch.randint(1, 49406, (2, 77), generator=g)
    ids[:, 9] = 49407
    with torch.no_grad():
        theirs_image = ref.get_image_features(pixel_values=pixels).pooler_output
        theirs_text = ref.get_text_features(input_ids=ids).pooler_output
        assert_close(ours.encode_image(pixels), theirs_image, 1e-5, 1e-5, f"{case}: image")
        assert_close(ours.encode_text(ids), theirs_text, 1e-5, 1e-5, f"{case}: text")


def test_every_field_transformers_writes_is_accepted(tiny_dir):
    # transformers' own to_dict() of a CLIPConfig, all three parts: nothing in it may be refused
    from transformers import CLIPConfig

    from miniclip.weights.hf import config_from_hf

    config_from_hf(CLIPConfig().to_dict())
    config_from_hf(json.loads((tiny_dir / "config.json").read_text()))


@pytest.mark.parametrize("part, key, value", [
    ("vision_config", "some_future_option", True),
    ("text_config", "position_embedding_type", "rotary"),
    ("vision_config", "num_channels", 1),
    ("text_config", "pruned_heads", {"0": [1]}),
    (None, "some_future_option", 1),
])
def test_unknown_or_unimplemented_field_is_refused_by_name(tiny_dir, tmp_path, part, key, value):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (config[part] if part else config)[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=key):
        CLIP.from_pretrained(folder)


def test_unimplemented_activation_is_refused_by_name(tiny_dir, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["hidden_act"] = "relu"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="hidden_act='relu'"):
        CLIP.from_pretrained(folder)


def test_openai_layout_with_open_clip_only_tensors_needs_its_config(tmp_path):
    # Layer scale in OpenAI's names but no open_clip_config.json: OpenAI's conventions cannot be assumed
    from open_clip_reference import build

    model_cfg = {"embed_dim": 32, "quick_gelu": True,
                 "vision_cfg": dict(image_size=32, patch_size=8, width=64, layers=1, ls_init_value=1e-4),
                 "text_cfg": dict(width=64, heads=1, layers=1, context_length=16)}
    sd = {k: v.contiguous() for k, v in build(model_cfg).state_dict().items()}
    torch.save(sd, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="layer scale.*open_clip_config.json"):
        CLIP.from_pretrained(tmp_path / "model.pt")
