"""Transformers-style model tests for GLIP on a tiny random config (CPU, no network, no checkpoints).

What is covered: output shapes of `GlipModel` / `GlipForGrounding`, save/load round trips, batch vs. single-sample
consistency (padded captions and padded images), determinism, no_grad and bf16 autocast, weight initialisation
(`_init_weights` through transformers' `initialize_weights`), gradient checkpointing and gradient flow, input
validation, and the architectural variants (no early fusion, DyHead switches, the legacy offset reinterpretation).
The config, anchors and box coder, and backbones have their own files.

transformers' `ModelTesterMixin` is not used: it lives in the transformers repository's tests/ folder, not in the
wheel (`transformers.testing_utils` ships no model mixins).

Tests that run a forward first overwrite every parameter with seeded random values (`randomize_weights_`): the
initial head gives near-constant outputs (tiny init std, a fixed prior bias), which would let bugs in the
comparisons go unnoticed.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import build, expected_spatial_shapes, tiny_config, tiny_inputs
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from glip_hf import GlipForGrounding, GlipModel

# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------



# Bookkeeping keys that legitimately change when a model is saved and loaded.
VOLATILE_CONFIG_KEYS = {"_name_or_path", "dtype", "transformers_version"}


def config_values(config) -> dict:
    """`config.to_dict()` without bookkeeping keys, sub-configs included."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in VOLATILE_CONFIG_KEYS}
        return value

    return strip(config.to_dict())


def assert_outputs_close(actual, expected, atol=1e-5, rtol=1e-4, fields=("logits", "pred_boxes", "centerness")):
    for field in fields:
        torch.testing.assert_close(getattr(actual, field), getattr(expected, field), atol=atol, rtol=rtol,
                                   msg=lambda m, field=field: f"{field}: {m}")


def assert_sample_matches(batched, index, single, text_length, atol=1e-5, rtol=1e-4):
    """Sample `index` of a batched output equals a single-sample output on its `text_length` real tokens."""
    pairs = {
        "logits": (batched.logits[index : index + 1, :, :text_length], single.logits),
        "pred_boxes": (batched.pred_boxes[index : index + 1], single.pred_boxes),
        "centerness": (batched.centerness[index : index + 1], single.centerness),
    }
    for field, (actual, expected) in pairs.items():
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol,
                                   msg=lambda m, field=field: f"sample {index} {field}: {m}")


# --------------------------------------------------------------------------------------------------------------
# 1. Output shapes
# --------------------------------------------------------------------------------------------------------------


def test_grounding_output_shapes_follow_the_pyramid():
    batch, height, width, text_length = 2, 320, 256, 9
    model = build()
    with torch.no_grad():
        outputs = model(**tiny_inputs(batch, height, width, text_length))

    assert outputs.spatial_shapes.tolist() == expected_spatial_shapes(height, width)
    num_anchors = int(outputs.spatial_shapes.prod(dim=1).sum())
    assert num_anchors == 40 * 32 + 20 * 16 + 10 * 8 + 5 * 4 + 3 * 2
    assert outputs.logits.shape == (batch, num_anchors, text_length)
    assert outputs.pred_boxes.shape == (batch, num_anchors, 4)
    assert outputs.box_regression.shape == (batch, num_anchors, 4)
    assert outputs.centerness.shape == (batch, num_anchors)
    assert outputs.anchors.shape == (batch, num_anchors, 4)
    assert outputs.text_mask.shape == (batch, text_length)
    for name in ("logits", "pred_boxes", "centerness", "anchors"):
        assert torch.isfinite(getattr(outputs, name)).all(), name


def test_base_model_output_shapes_and_hidden_states():
    batch, height, width, text_length = 2, 256, 320, 7
    config = tiny_config()
    model = build(GlipModel)
    with torch.no_grad():
        outputs = model(**tiny_inputs(batch, height, width, text_length), output_hidden_states=True)

    shapes = expected_spatial_shapes(height, width)
    assert outputs.spatial_shapes.tolist() == shapes
    assert [tuple(f.shape) for f in outputs.vision_features] == [
        (batch, config.head_channels, h, w) for h, w in shapes
    ]
    assert outputs.text_features.shape == (batch, text_length, config.text_config.hidden_size)
    num_anchors = sum(h * w for h, w in shapes)

    assert len(outputs.backbone_features) == 3
    assert [f.shape[-2:] for f in outputs.backbone_features] == [
        (height // s, width // s) for s in (8, 16, 32)
    ]
    assert len(outputs.fpn_features) == len(model.config.anchor_strides)
    assert len(outputs.vision_hidden_states) == config.num_dyhead_layers + 1
    assert all(h.shape == (batch, num_anchors, config.head_channels) for h in outputs.vision_hidden_states)
    assert len(outputs.text_hidden_states) == config.num_dyhead_layers + 1
    assert len(outputs.fusion_vision_hidden_states) == config.num_dyhead_layers
    assert len(outputs.text_encoder_hidden_states) == config.text_config.num_hidden_layers + 1

    # Without output_hidden_states the optional fields stay empty.
    with torch.no_grad():
        plain = model(**tiny_inputs(batch, height, width, text_length))
    assert plain.vision_hidden_states is None and plain.backbone_features is None
    torch.testing.assert_close(plain.text_features, outputs.text_features, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# 2. Save / load
# --------------------------------------------------------------------------------------------------------------


def _save_and_reload(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert (tmp_path / "config.json").is_file()
    return type(model).from_pretrained(tmp_path).eval()


@pytest.mark.parametrize("model_class", [GlipForGrounding, GlipModel])
def test_save_and_load_round_trip_keeps_config_and_weights(tmp_path, model_class):
    model = build(model_class, fusion_layer_scale_init=0.25, legacy_upsampled_offset_reinterpretation=True)
    reloaded = _save_and_reload(model, tmp_path)

    assert type(reloaded) is model_class
    assert config_values(reloaded.config) == config_values(model.config)
    assert reloaded.config.fusion_layer_scale_init == 0.25
    assert reloaded.config.legacy_upsampled_offset_reinterpretation is True
    assert reloaded.config.backbone_config.embed_dim == 16
    assert reloaded.config.text_config.hidden_size == 32
    reloaded_state = reloaded.state_dict()
    assert reloaded_state.keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded_state[name], tensor), name


@pytest.mark.parametrize(
    "model_class",
    [
        GlipForGrounding,
        GlipModel,
    ],
)
def test_save_and_load_round_trip_gives_identical_outputs(tmp_path, model_class):
    model = build(model_class, legacy_upsampled_offset_reinterpretation=True)
    inputs = tiny_inputs(1, 256, 256, 10)
    with torch.no_grad():
        expected = model(**inputs)
    reloaded = _save_and_reload(model, tmp_path)
    with torch.no_grad():
        actual = reloaded(**inputs)
    if model_class is GlipForGrounding:
        fields = ("logits", "pred_boxes", "centerness", "anchors")
    else:
        fields = ("text_features", "spatial_shapes")
    # Equal weights do not promise bit-equal outputs: CPU kernels pick their vector paths and summation order by
    # the memory's alignment and the thread split, so only a tight tolerance is guaranteed.
    for field in fields:
        torch.testing.assert_close(getattr(actual, field), getattr(expected, field), rtol=1e-5, atol=1e-6, msg=lambda message: f"{field}: {message}")
    if model_class is GlipModel:
        for got, want in zip(actual.vision_features, expected.vision_features):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_loaded_weights_do_not_change_when_the_file_is_overwritten_in_place(tmp_path):
    model = build()
    model.save_pretrained(tmp_path / "a")
    build(seed=5).save_pretrained(tmp_path / "b")
    reloaded = GlipForGrounding.from_pretrained(tmp_path / "a").eval()
    expected = {name: tensor.clone() for name, tensor in reloaded.state_dict().items()}
    # `cp b/model.safetensors a/` rewrites the file's pages in place; weights mapped from it would follow.
    shutil.copyfile(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


# --------------------------------------------------------------------------------------------------------------
# 3. Batch vs. single samples
# --------------------------------------------------------------------------------------------------------------


def test_batch_with_padded_captions_matches_single_runs():
    model = build()
    inputs = tiny_inputs(2, 256, 256, 12, seed=1)
    lengths = [12, 7]
    inputs["attention_mask"][1, lengths[1]:] = 0
    inputs["input_ids"][1, lengths[1]:] = 0  # pad token
    with torch.no_grad():
        batched = model(**inputs)

    for i, length in enumerate(lengths):
        single_inputs = {
            "pixel_values": inputs["pixel_values"][i : i + 1],
            "input_ids": inputs["input_ids"][i : i + 1, :length],
            "attention_mask": inputs["attention_mask"][i : i + 1, :length],
        }
        with torch.no_grad():
            single = model(**single_inputs)
        assert single.logits.shape[-1] == length
        assert_sample_matches(batched, i, single, length)
    # The check is meaningful only if the two samples really differ.
    assert not torch.allclose(batched.logits[0, :, :7], batched.logits[1, :, :7], atol=1e-3)


def test_batch_of_zero_padded_images_of_different_sizes_matches_single_runs():
    model = build()
    generator = torch.Generator().manual_seed(2)
    images = [torch.randn(3, 256, 320, generator=generator), torch.randn(3, 192, 256, generator=generator)]
    canvas = (256, 320)
    padded = torch.stack(
        [F.pad(image, (0, canvas[1] - image.shape[-1], 0, canvas[0] - image.shape[-2])) for image in images]
    )
    assert torch.equal(padded[1, :, 192:, :], torch.zeros(3, 64, 320))
    text = tiny_inputs(2, 8, 8, 10, seed=3)
    with torch.no_grad():
        batched = model(pixel_values=padded, input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        for i in range(2):
            single = model(
                pixel_values=padded[i : i + 1], input_ids=text["input_ids"][i : i + 1],
                attention_mask=text["attention_mask"][i : i + 1],
            )
            assert_sample_matches(batched, i, single, text_length=10)


# --------------------------------------------------------------------------------------------------------------
# 4. Determinism, 5. no_grad and autocast
# --------------------------------------------------------------------------------------------------------------


def test_eval_forward_is_deterministic():
    model = build()
    inputs = tiny_inputs(2, 256, 256, 12)
    with torch.no_grad():
        first, second = model(**inputs), model(**inputs)
    for field in ("logits", "pred_boxes", "centerness", "box_regression", "anchors"):
        assert torch.equal(getattr(first, field), getattr(second, field)), field


def test_forward_under_no_grad_builds_no_graph():
    model = build()
    with torch.no_grad():
        outputs = model(**tiny_inputs(1, 256, 256, 8))
    assert not outputs.logits.requires_grad and outputs.logits.grad_fn is None
    assert torch.isfinite(outputs.logits).all()


def _check_bf16_autocast_close_to_fp32(model):
    inputs = tiny_inputs(2, 256, 256, 10)
    with torch.no_grad():
        reference = model(**inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(**inputs)
    for field in ("logits", "pred_boxes", "centerness"):
        value = getattr(low, field).float()
        assert torch.isfinite(value).all(), field
    relative_error = (low.logits.float() - reference.logits).norm() / reference.logits.norm()
    assert relative_error < 5e-2, relative_error
    box_scale = reference.pred_boxes.abs().max()
    assert (low.pred_boxes.float() - reference.pred_boxes).abs().max() < 5e-2 * box_scale


def test_bf16_autocast_without_deformable_conv_is_close_to_fp32():
    _check_bf16_autocast_close_to_fp32(build(use_deformable_conv=False))


def test_bf16_autocast_with_deformable_conv_is_close_to_fp32():
    _check_bf16_autocast_close_to_fp32(build())


# --------------------------------------------------------------------------------------------------------------
# 6. Weight initialisation
# --------------------------------------------------------------------------------------------------------------


def _reinitialize_from_nan(model):
    """Fill every parameter with NaN, clear transformers' "already initialised" flags, run initialize_weights."""
    assert hasattr(model, "initialize_weights"), "transformers 5 API `initialize_weights` is missing"
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(float("nan"))
    for item in [*model.modules(), *model.parameters(), *model.buffers()]:
        if hasattr(item, "_is_hf_initialized"):
            del item._is_hf_initialized
    model.initialize_weights()
    return model


def test_initialize_weights_covers_every_parameter():
    torch.manual_seed(0)
    model = _reinitialize_from_nan(GlipForGrounding(tiny_config()))
    still_nan = [name for name, param in model.named_parameters() if torch.isnan(param).any()]
    assert still_nan == []


def test_initialize_weights_sets_head_and_fusion_values():
    torch.manual_seed(0)
    config = tiny_config(fusion_layer_scale_init=0.3)
    model = GlipForGrounding(config)
    # Both at construction (post_init) and after a re-initialisation from NaN.
    for candidate in (model, _reinitialize_from_nan(model)):
        prior_bias = -math.log((1 - 0.01) / 0.01)
        torch.testing.assert_close(candidate.head.logit_bias, torch.tensor([prior_bias]))
        assert torch.equal(candidate.head.log_scale, torch.tensor([config.log_scale_init]))
        assert torch.equal(candidate.head.text_bias, torch.zeros_like(candidate.head.text_bias))
        for scale in candidate.head.scales:
            assert torch.equal(scale.scale, torch.ones(1))
        for layer in candidate.model.layers:
            assert torch.allclose(layer.fusion.vision_gamma, torch.full_like(layer.fusion.vision_gamma, 0.3))
            assert torch.allclose(layer.fusion.text_gamma, torch.full_like(layer.fusion.text_gamma, 0.3))


def test_default_fusion_layer_scale_is_one_over_num_layers():
    config = tiny_config(num_dyhead_layers=4)
    assert config.fusion_layer_scale_init == 0.25
    torch.manual_seed(0)
    model = GlipForGrounding(config)
    assert torch.allclose(model.model.layers[0].fusion.vision_gamma, torch.tensor(0.25))


def test_initial_deformable_offsets_are_zero():
    torch.manual_seed(0)
    model = GlipForGrounding(tiny_config())
    for layer in model.model.layers:
        assert torch.equal(layer.dyconv.offset_conv.weight, torch.zeros_like(layer.dyconv.offset_conv.weight))
        assert torch.equal(layer.dyconv.offset_conv.bias, torch.zeros_like(layer.dyconv.offset_conv.bias))


# --------------------------------------------------------------------------------------------------------------
# 7. Gradient checkpointing, 8. gradient flow
# --------------------------------------------------------------------------------------------------------------


def _gradients(model, inputs):
    model.zero_grad(set_to_none=True)
    outputs = model(**inputs)
    outputs.logits.sum().backward()
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}


@pytest.mark.filterwarnings("ignore:.*(gradient|activation)_checkpointing.*:FutureWarning")
def test_gradient_checkpointing_gives_the_same_gradients():
    model = build().train()
    inputs = tiny_inputs(2, 256, 256, 8)
    reference = _gradients(model, inputs)

    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    assert all(isinstance(layer, GradientCheckpointingLayer) for layer in model.model.layers)
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    assert model.model.layers[0].gradient_checkpointing is True
    checkpointed = _gradients(model, inputs)

    assert checkpointed.keys() == reference.keys()
    for name, grad in reference.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")

    model.gradient_checkpointing_disable()
    assert not any(layer.gradient_checkpointing for layer in model.model.layers)


@pytest.mark.filterwarnings("ignore:.*(gradient|activation)_checkpointing.*:FutureWarning")
@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad:UserWarning")
def test_reentrant_gradient_checkpointing_gives_the_same_gradients():
    model = build().train()
    inputs = tiny_inputs(1, 256, 256, 6)
    reference = _gradients(model, inputs)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    checkpointed = _gradients(model, inputs)
    assert checkpointed.keys() == reference.keys()
    # Reentrant backward accumulates in another order: compare against each tensor's own scale. (Key biases have
    # an exactly-zero true gradient, so their float noise is judged by the same absolute floor.)
    for name, grad in reference.items():
        error = (checkpointed[name] - grad).abs().max().item()
        assert error <= 1e-5 * grad.abs().max().item() + 1e-5, f"{name}: max difference {error:.3g}"


def test_every_parameter_receives_a_gradient():
    model = build().train()
    outputs = model(**tiny_inputs(2, 256, 256, 8))
    (outputs.logits.sum() + outputs.pred_boxes.sum() + outputs.centerness.sum()).backward()

    without_grad = [name for name, param in model.named_parameters() if param.grad is None]
    assert without_grad == []
    all_zero = [name for name, param in model.named_parameters() if not param.grad.abs().sum() > 0]
    assert all_zero == []


# --------------------------------------------------------------------------------------------------------------
# 9. Input validation
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validation_model():
    return build()


def test_mismatched_batch_sizes_raise(validation_model):
    inputs = tiny_inputs(2, 256, 256, 8)
    inputs["input_ids"] = inputs["input_ids"][:1]
    inputs["attention_mask"] = inputs["attention_mask"][:1]
    with pytest.raises(ValueError, match=r"Batch sizes differ.*2 images.*1 captions"):
        validation_model(**inputs)


def test_text_longer_than_max_text_len_raises(validation_model):
    inputs = tiny_inputs(1, 256, 256, 33)
    with pytest.raises(ValueError, match=r"33 tokens.*max_text_len=32"):
        validation_model(**inputs)


def test_image_smaller_than_coarsest_stride_raises(validation_model):
    inputs = tiny_inputs(1, 64, 64, 8)
    with pytest.raises(ValueError, match=r"at least 128 per side"):
        validation_model(**inputs)
    inputs = tiny_inputs(1, 256, 96, 8)
    with pytest.raises(ValueError, match=r"at least 128 per side"):
        validation_model(**inputs)


def test_wrong_rank_pixel_values_raise(validation_model):
    inputs = tiny_inputs(1, 256, 256, 8)
    inputs["pixel_values"] = inputs["pixel_values"][0]
    with pytest.raises(ValueError, match=r"pixel_values must be \(batch, 3, height, width\)"):
        validation_model(**inputs)


def test_wrong_attention_mask_shape_raises(validation_model):
    inputs = tiny_inputs(1, 256, 256, 8)
    inputs["attention_mask"] = inputs["attention_mask"][:, :5]
    with pytest.raises(ValueError, match=r"attention_mask"):
        validation_model(**inputs)


# --------------------------------------------------------------------------------------------------------------
# 11. Architectural variants
# --------------------------------------------------------------------------------------------------------------


def test_variant_without_early_fusion_has_no_fusion_modules_and_runs():
    model = build(GlipModel, early_fusion=False, fused_features_dot_product=False)
    for layer in model.layers:
        assert layer.fusion is None
        assert layer.text_layer is None
    assert not any("fusion" in name or "text_layer" in name for name, _ in model.named_parameters())

    inputs = tiny_inputs(2, 256, 256, 10)
    inputs["attention_mask"][1, 6:] = 0
    with torch.no_grad():
        outputs = model(**inputs)
        text_tower = model.text_backbone(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    # Tokens are scored with the text tower's own output, zeroed on padding.
    expected = text_tower.last_hidden_state * inputs["attention_mask"][..., None]
    torch.testing.assert_close(outputs.text_features, expected, atol=0, rtol=0)
    assert all(torch.isfinite(f).all() for f in outputs.vision_features)

    grounding = build(early_fusion=False, fused_features_dot_product=False)
    with torch.no_grad():
        assert torch.isfinite(grounding(**inputs).logits).all()


def test_early_fusion_without_fused_dot_product_drops_only_the_last_text_layer():
    model = build(GlipModel, num_dyhead_layers=3, fused_features_dot_product=False)
    assert [layer.fusion is not None for layer in model.layers] == [True, True, True]
    assert [layer.text_layer is not None for layer in model.layers] == [True, True, False]
    with torch.no_grad():
        assert torch.isfinite(model(**tiny_inputs(1, 256, 256, 6)).text_features).all()


def test_variant_with_dyhead_switches_off_runs():
    model = build(
        use_deformable_conv=False, use_dyrelu=False, use_group_norm=False, use_scale_aware_attention=False,
    )
    dyconv = model.model.layers[0].dyconv
    assert dyconv.offset_conv is None
    assert dyconv.scale_attention is None
    assert isinstance(dyconv.activation, nn.ReLU)
    assert isinstance(dyconv.conv_same.norm, nn.Identity)
    with torch.no_grad():
        outputs = model(**tiny_inputs(2, 256, 256, 8))
    assert outputs.logits.shape[0] == 2
    for field in ("logits", "pred_boxes", "centerness"):
        assert torch.isfinite(getattr(outputs, field)).all(), field


def _legacy_pair(offset_std: float):
    """Two models with identical weights that differ only in legacy_upsampled_offset_reinterpretation.

    The offset convs get random weights of `offset_std` (0 = the plain-conv start, zero offsets).
    """
    legacy = build(legacy_upsampled_offset_reinterpretation=True)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in legacy.model.layers:
            for param in layer.dyconv.offset_conv.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * offset_std)
    resampled = build(legacy_upsampled_offset_reinterpretation=False, randomize=False)
    resampled.load_state_dict(legacy.state_dict())
    assert legacy.model.layers[0].dyconv.legacy_upsampled_offset_reinterpretation is True
    assert resampled.model.layers[0].dyconv.legacy_upsampled_offset_reinterpretation is False
    return legacy, resampled


def test_legacy_offset_reinterpretation_changes_outputs_once_offsets_are_nonzero():
    legacy, resampled = _legacy_pair(offset_std=0.1)
    inputs = tiny_inputs(1, 256, 256, 8)
    with torch.no_grad():
        out_legacy, out_resampled = legacy(**inputs), resampled(**inputs)
    for outputs in (out_legacy, out_resampled):
        assert torch.isfinite(outputs.logits).all() and torch.isfinite(outputs.pred_boxes).all()
    assert not torch.allclose(out_legacy.logits, out_resampled.logits, atol=1e-4)
    assert not torch.allclose(out_legacy.pred_boxes, out_resampled.pred_boxes, atol=1e-3)


def test_legacy_offset_reinterpretation_is_irrelevant_with_zero_offsets():
    legacy, resampled = _legacy_pair(offset_std=0.0)
    inputs = tiny_inputs(1, 256, 256, 8)
    with torch.no_grad():
        assert_outputs_close(legacy(**inputs), resampled(**inputs), atol=1e-6, rtol=1e-6)
