"""Exact text truncation (``trainer.truncate``): a cut batch gives the full-length encoder's features.

Real open_clip towers (tiny configs, random init): open_clip's ``CLIP`` and a ``CustomTextCLIP``
whose text tower is a ``TextTransformer``. Features at the cut length are compared with those of
the untouched model on the full 77 positions; the cut is computed by the loaders' own collate
functions on the CPU. Towers where a cut is not exact are left alone.
"""

from __future__ import annotations

import copy
import json

import open_clip
import pytest
import torch

from trainer import truncate
from trainer.data import collate
from trainer.gpu_data import collate_raw

CAPTIONS = [
    "a red circle",
    "a blue square in the top left corner next to a small green triangle",
    "two yellow stars",
    "a photo",
]

TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
VISION_CFG = {"image_size": 32, "patch_size": 8, "width": 64, "head_width": 32, "layers": 1, "mlp_ratio": 2.0}


def make_model(tmp_path, custom_text: bool = False, **text) -> torch.nn.Module:
    cfg = {"embed_dim": 32, "vision_cfg": VISION_CFG, "text_cfg": {**TEXT_CFG, **text}}
    if custom_text:
        cfg["custom_text"] = True
    d = tmp_path / ("custom" if custom_text else "clip")
    d.mkdir(exist_ok=True)
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    torch.manual_seed(0)
    return open_clip.create_model(f"local-dir:{d}").eval()


@pytest.mark.parametrize("custom_text", [False, True], ids=["CLIP", "CustomTextCLIP"])
def test_cut_batches_give_the_full_length_features(tmp_path, custom_text):
    model = make_model(tmp_path, custom_text)
    full_model = copy.deepcopy(model)  # open_clip's own encode_text, untouched
    tokens = open_clip.get_tokenizer("ViT-B-32")(CAPTIONS)
    assert tokens.shape == (4, 77)
    cut, why = truncate.enable(model)
    assert cut is not None, why
    images = torch.zeros(4, 3, 32, 32)
    # the loaders' collate functions cut on the CPU: the longest caption has 15 tokens + SOT/EOT -> 16
    _, short = collate(list(zip(images, tokens, strict=True)), cut)
    raw = collate_raw([(True, torch.zeros(3, dtype=torch.uint8), torch.zeros(4), t) for t in tokens], cut)
    assert short.shape == (4, 16)
    assert torch.equal(raw["tokens"], short)
    assert torch.equal(short, tokens[:, :16])
    with torch.no_grad():
        expected = full_model.encode_text(tokens)
        got = model.encode_text(short)
        at_full = model.encode_text(tokens)  # the sliced encoder at full length is open_clip's
        # the whole forward (what the training step calls) too
        out = model(images, short)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(at_full, expected, rtol=0, atol=0)
    torch.testing.assert_close(out[1], full_model(images, tokens)[1], rtol=0, atol=1e-6)
    # open_clip's own encoder refuses the cut batch: the slicing is what makes it work
    with pytest.raises(RuntimeError):
        full_model.encode_text(short)


def test_lengths_round_up_to_buckets_capped_at_the_context():
    cut = truncate.TokenCut(context_length=77, pool_type="argmax")
    assert cut.sizes() == (16, 32, 48, 64, 77)

    def batch(n):  # SOT, n-2 words, EOT (the highest id), padding
        t = torch.zeros(2, 77, dtype=torch.long)
        t[:, 0], t[0, 1 : n - 1], t[:, n - 1] = 49406, 320, 49407
        return t

    assert [cut.length(batch(n)) for n in (3, 16, 17, 33, 64, 65, 77)] == [16, 16, 32, 48, 64, 77, 77]
    assert truncate.TokenCut(context_length=32, pool_type="argmax").sizes() == (16, 32)
    eos = truncate.TokenCut(context_length=77, pool_type="eos", eos_id=2)
    t = torch.tensor([[5, 9, 2, 0, 0] + [0] * 72, [5, 9, 9, 9, 9] + [9] * 15 + [2] + [0] * 56])
    assert eos.length(t) == 32


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ({"no_causal_mask": True}, "bidirectional"),
        ({"pool_type": "last"}, "pools with 'last'"),
    ],
)
def test_towers_where_a_cut_is_not_exact_are_left_alone(tmp_path, text, reason):
    model = make_model(tmp_path, True, **text)
    cut, why = truncate.enable(model)
    assert cut is None, why
    assert reason in why, why
    assert "_embeds" not in vars(model.text)  # untouched
