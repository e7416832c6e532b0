"""Retrieval recall@K (miniclip/evaluate/retrieval.py) against a similarity matrix worked out by hand, against a
plain-loop implementation on random matrices, and `miniclip eval retrieval` on the pair formats.

The tie rule under test: a right answer's rank is the number of WRONG candidates scoring at least as high as
it (for image -> text, as high as the image's best caption); a query is a hit at K when its rank is below K.
"""

import json
import random

import pytest
import torch
import torch.nn.functional as F
from test_cli import make_image

import miniclip
from miniclip.cli import main
from miniclip.errors import InputError
from miniclip.evaluate import read_pairs, recall_from_similarity, retrieval_recall

# 3 images (A, B, C) and 7 captions: a0 a1 a2 show A, b0 b1 show B, c0 c1 show C.
#                    a0    a1    a2    b0    b1    c0    c1
SIMS = torch.tensor([[0.9, 0.1, 0.5, 0.9, 0.2, 0.3, 0.4],  # A
                     [0.2, 0.6, 0.1, 0.3, 0.7, 0.6, 0.0],  # B
                     [0.9, 0.4, 0.5, 0.35, 0.3, 0.2, 0.3]])  # C
CAPTION_IMAGE = [0, 0, 0, 1, 1, 2, 2]


def test_recall_by_hand():
    # image -> text (the best of the image's own captions counts):
    #   A: best own a0 = 0.9; wrong captions >= 0.9: b0 (a tie)                     -> rank 1
    #   B: best own b1 = 0.7 (b0 = 0.3 is 4th): none                                -> rank 0
    #   C: best own c1 = 0.3; wrong >= 0.3: a0, a1, a2, b0 and b1 (a tie at 0.3)     -> rank 5
    # text -> image (each caption's column):
    #   a0 (A 0.9): C 0.9 tie -> 1;  a1 (A 0.1): B, C -> 2;  a2 (A 0.5): C 0.5 tie -> 1
    #   b0 (B 0.3): A 0.9, C 0.35 -> 2;  b1 (B 0.7): -> 0
    #   c0 (C 0.2): A 0.3, B 0.6 -> 2;  c1 (C 0.3): A 0.4 -> 1
    expected = {"image_to_text_R@1": 1 / 3, "image_to_text_R@5": 2 / 3, "image_to_text_R@10": 1.0,
                "text_to_image_R@1": 1 / 7, "text_to_image_R@5": 1.0, "text_to_image_R@10": 1.0}
    got = recall_from_similarity(SIMS, CAPTION_IMAGE)
    assert {k: got[k] for k in expected} == pytest.approx(expected)
    assert got["images"] == 3 and got["captions"] == 7
    assert recall_from_similarity(SIMS, CAPTION_IMAGE, ks=(2, 6))["image_to_text_R@6"] == 1.0


def test_equal_scores_are_misses():
    flat = torch.zeros(3, 7)  # a model that cannot tell anything apart retrieves nothing
    got = recall_from_similarity(flat, CAPTION_IMAGE, ks=(1, 2))
    assert got["image_to_text_R@1"] == got["text_to_image_R@1"] == got["text_to_image_R@2"] == 0.0


def loop_ranks(sims, caption_image):
    """The definition, one query at a time, with sorted lists."""
    n_images, n_captions = len(sims), len(sims[0])
    i2t = []
    for i in range(n_images):
        own = [j for j in range(n_captions) if caption_image[j] == i]
        best = max(sims[i][j] for j in own)
        i2t.append(sum(1 for j in range(n_captions) if j not in own and sims[i][j] >= best))
    t2i = [sum(1 for i in range(n_images) if i != caption_image[j] and sims[i][j] >= sims[caption_image[j]][j])
           for j in range(n_captions)]
    return i2t, t2i


@pytest.mark.parametrize("seed", range(5))
def test_recall_equals_the_definition_on_random_matrices(seed):
    rng = random.Random(seed)
    n_images = rng.randint(1, 12)
    caption_image = list(range(n_images)) + [rng.randrange(n_images) for _ in range(rng.randint(0, 30))]
    rng.shuffle(caption_image)
    sims = [[rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]) for _ in caption_image] for _ in range(n_images)]  # many ties
    i2t, t2i = loop_ranks(sims, caption_image)
    got = recall_from_similarity(torch.tensor(sims), caption_image, ks=(1, 3, 10))
    for k in (1, 3, 10):
        assert got[f"image_to_text_R@{k}"] == pytest.approx(sum(r < k for r in i2t) / n_images)
        assert got[f"text_to_image_R@{k}"] == pytest.approx(sum(r < k for r in t2i) / len(caption_image))


def test_blocks_change_nothing():
    g = torch.Generator().manual_seed(0)
    images, texts = torch.randn(7, 8, generator=g), torch.randn(20, 8, generator=g)
    caption_image = torch.arange(20) % 7
    whole = recall_from_similarity(F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).t(), caption_image)
    assert retrieval_recall(images, texts, caption_image, block=3) == pytest.approx(whole)


def test_bad_caption_indices():
    with pytest.raises(InputError, match="image 2 has no caption"):
        recall_from_similarity(SIMS, [0, 0, 0, 1, 1, 1, 1])
    with pytest.raises(InputError, match=r"expected \(7,\)"):
        recall_from_similarity(SIMS, [0, 1, 2])


def write_pairs(tmp_path):
    for i in range(3):
        make_image(tmp_path / "im" / f"{i}.jpg", seed=20 + i)
    rows = [("im/0.jpg", "a cat"), ("im/1.jpg", "a dog on grass"), ("im/0.jpg", "a sleeping cat"),
            ("im/2.jpg", "a red car"), ("im/1.jpg", "a puppy"), ("im/2.jpg", "a car, \"red\"")]
    import csv

    with open(tmp_path / "pairs.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("image", "caption"), *rows])
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"image": i, "caption": c}) + "\n" for i, c in rows),
                                          encoding="utf-8")
    return rows


@torch.no_grad()
def test_retrieval_command_equals_the_definition(tmp_path, tiny_dir, tiny_ref, capsys):
    from PIL import Image
    from transformers import CLIPImageProcessorPil, CLIPTokenizerFast

    rows = write_pairs(tmp_path)
    pairs = read_pairs(tmp_path / "pairs.csv")
    assert [p.name for p in pairs.images] == ["0.jpg", "1.jpg", "2.jpg"]
    assert pairs.caption_image == [0, 1, 0, 2, 1, 2] and pairs.captions == [c for _, c in rows]
    assert read_pairs(tmp_path / "pairs.jsonl") == pairs

    # the reference: transformers' processor, tokenizer and CLIPModel, cosine similarity, the loop definition
    pixels = CLIPImageProcessorPil.from_pretrained(tiny_dir)([Image.open(p) for p in pairs.images],
                                                             return_tensors="pt")["pixel_values"]
    ids = CLIPTokenizerFast.from_pretrained(tiny_dir)(pairs.captions, padding=True, return_tensors="pt")["input_ids"]
    sims = (F.normalize(tiny_ref.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
            @ F.normalize(tiny_ref.get_text_features(input_ids=ids).pooler_output, dim=-1).t())
    i2t, t2i = loop_ranks(sims.tolist(), pairs.caption_image)

    for name in ("pairs.csv", "pairs.jsonl"):
        assert main(["eval", "retrieval", str(tmp_path / name), "--model", str(tiny_dir), "--no-cache", "--json"]) == 0
        metrics = json.loads(capsys.readouterr().out)
        for k in (1, 5, 10):
            assert metrics[f"image_to_text_R@{k}"] == pytest.approx(sum(r < k for r in i2t) / 3)
            assert metrics[f"text_to_image_R@{k}"] == pytest.approx(sum(r < k for r in t2i) / 6)
    assert main(["eval", "retrieval", str(tmp_path / "pairs.csv"), "--model", str(tiny_dir), "--no-cache"]) == 0
    assert "retrieval: 3 images, 6 captions" in capsys.readouterr().out


@pytest.mark.parametrize("name, text, message", [
    ("p.csv", "image,text\nim/0.jpg,a cat\n", "header image,text lacks caption; expected a first line image,caption"),
    ("p.csv", "image,caption\nim/9.jpg,a cat\n", "p.csv, line 2: no such image file"),
    ("p.csv", "image,caption\nim/0.jpg,\n", "p.csv, line 2: no caption"),
    ("p.jsonl", '{"image": "im/0.jpg", "caption": "a"}\n{"image": "im/0.jpg"}\n', "line 2: expected an object"),
    ("p.jsonl", "{not json\n", "p.jsonl, line 1: not JSON"),
    ("p.txt", "im/0.jpg a cat\n", "pairs are read from a .csv"),
])
def test_bad_pairs_files(tmp_path, name, text, message):
    make_image(tmp_path / "im" / "0.jpg")
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises((InputError, FileNotFoundError), match=message.replace("(", r"\(").replace(")", r"\)")):
        read_pairs(tmp_path / name)


def test_models_reach_the_recall_api(tiny_dir):
    # the library path: embeddings straight from a model, any captions per image
    model, _ = miniclip.load(tiny_dir)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        image_embeds = model.encode_image(images)
        text_embeds = model.encode_text(model.tokenize(["a", "b", "c", "d", "e"]))
    got = retrieval_recall(image_embeds, text_embeds, [0, 1, 2, 3, 3], ks=(4,))
    assert got["text_to_image_R@4"] == 1.0  # 4 images: at most 3 wrong ones can score above a caption's own
