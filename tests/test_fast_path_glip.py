"""The fast path: compiled layers without graph breaks, cached anchors, padding to the longest prompt, reduced
precision close to float32, and no host-device synchronisation in forward (on a GPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config, tiny_inputs

from glip_hf import GlipForGrounding


def _model(**overrides):
    torch.manual_seed(0)
    model = GlipForGrounding(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim > 1:
                parameter.normal_(0, 0.05)
    return model


def test_dyhead_layers_and_head_compile_without_graph_breaks():
    model = _model(legacy_upsampled_offset_reinterpretation=True)
    inputs = tiny_inputs(1, 256, 256, 8)
    with torch.no_grad():
        outputs = model.model(**inputs)
        vision = model.model.vision_backbone(inputs["pixel_values"])[1]
        text, _ = model.model.encode_text(inputs["input_ids"], inputs["attention_mask"])
        layer = model.model.layers[0]
        # fullgraph=True raises on any graph break.
        compiled_layer = torch.compile(layer, backend="eager", fullgraph=True)
        for eager, compiled in zip(layer(text, inputs["attention_mask"], *vision),
                                   compiled_layer(text, inputs["attention_mask"], *vision)):
            torch.testing.assert_close(compiled, eager)
        compiled_head = torch.compile(model.head, backend="eager", fullgraph=True)
        for eager, compiled in zip(model.head(outputs.vision_features, outputs.text_features),
                                   compiled_head(outputs.vision_features, outputs.text_features)):
            torch.testing.assert_close(compiled, eager)


def test_anchors_are_cached_per_feature_size():
    model = _model()
    shapes = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    first = model.anchor_generator.anchors_per_level(shapes, torch.device("cpu"))
    again = model.anchor_generator.anchors_per_level(shapes, torch.device("cpu"))
    assert all(a is b for a, b in zip(first, again))
    other = model.anchor_generator.anchors_per_level([(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)], torch.device("cpu"))
    assert other[0].shape[0] == 256


def test_padding_to_the_longest_prompt_does_not_change_real_tokens():
    model = _model()
    inputs = tiny_inputs(1, 256, 256, 8)
    padded = dict(inputs)
    padded["input_ids"] = torch.cat([inputs["input_ids"], torch.zeros(1, 24, dtype=torch.long)], dim=1)
    padded["attention_mask"] = torch.cat([inputs["attention_mask"], torch.zeros(1, 24, dtype=torch.long)], dim=1)
    with torch.no_grad():
        short, long = model(**inputs), model(**padded)
    torch.testing.assert_close(long.logits[..., :8], short.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(long.pred_boxes, short.pred_boxes, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_bf16_autocast_stays_close_to_float32(implementation):
    model = _model()
    model.set_fusion_attention(implementation)
    inputs = tiny_inputs(2, 256, 256, 8)
    with torch.no_grad():
        reference = model(**inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(**inputs)
    error = (low.logits.float() - reference.logits).norm() / reference.logits.norm()
    assert error < 1e-2, float(error)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host-device synchronisation only exists with a GPU")
def test_forward_does_not_synchronise_with_the_host():
    model = _model().cuda()
    inputs = {k: v.cuda() for k, v in tiny_inputs(2, 256, 256, 8).items()}
    with torch.no_grad():
        model(**inputs)  # warm-up: anchors cached, kernels loaded
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(**inputs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
