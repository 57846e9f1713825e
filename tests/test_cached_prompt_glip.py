"""Prompt encoding once: `encode_prompt`'s output given as `text_features` gives the full path's outputs."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config, tiny_inputs
from glip_hf import GlipForGrounding


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GlipForGrounding(tiny_config()).eval()


@pytest.mark.parametrize("batch_size", [1, 2])
def test_cached_prompt_equals_the_full_path(model, batch_size):
    inputs = tiny_inputs(batch_size=batch_size, height=128, width=160, text_length=9)
    inputs["attention_mask"][-1, -3:] = 0  # a padded caption too
    with torch.no_grad():
        full = model(**inputs)
        text_features = model.encode_prompt(inputs["input_ids"], inputs["attention_mask"])
        cached = model(inputs["pixel_values"], text_features=text_features, attention_mask=inputs["attention_mask"])
    for name in ("logits", "pred_boxes", "centerness"):
        assert torch.equal(cached[name], full[name]), name


def test_one_encoded_prompt_serves_several_images(model):
    inputs = tiny_inputs(batch_size=3, height=128, width=128, text_length=7)
    prompt_ids, prompt_mask = inputs["input_ids"][:1], inputs["attention_mask"][:1]
    with torch.no_grad():
        text_features = model.encode_prompt(prompt_ids, prompt_mask)
        for image in inputs["pixel_values"]:
            full = model(image[None], prompt_ids, prompt_mask)
            cached = model(image[None], text_features=text_features, attention_mask=prompt_mask)
            assert torch.equal(cached.logits, full.logits)
            assert torch.equal(cached.pred_boxes, full.pred_boxes)


def test_cached_prompt_with_rows_in_groups_equals_the_full_path(model):
    inputs = tiny_inputs(batch_size=2, height=128, width=128, text_length=6)
    model.config.max_prompts_per_pass = 1
    try:
        with torch.no_grad():
            full = model(**inputs)
            text_features = torch.cat([model.encode_prompt(ids[None], mask[None])
                                       for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])])
            cached = model(inputs["pixel_values"], text_features=text_features,
                           attention_mask=inputs["attention_mask"])
    finally:
        model.config.max_prompts_per_pass = None
    assert torch.equal(cached.logits, full.logits)


def test_text_features_and_input_ids_are_exclusive(model):
    inputs = tiny_inputs(batch_size=1, height=128, width=128, text_length=6)
    features = model.encode_prompt(inputs["input_ids"])
    with pytest.raises(ValueError, match="either input_ids or text_features"):
        model(**inputs, text_features=features)
    with pytest.raises(ValueError, match="either input_ids or text_features"):
        model(inputs["pixel_values"])
    with pytest.raises(ValueError, match=r"text_features must be \(batch, text_length, 32\)"):
        model(inputs["pixel_values"], text_features=features[..., :8])
