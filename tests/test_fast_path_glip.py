"""The fast path: compiled layers without graph breaks, cached anchors, padding to the longest prompt, reduced
precision close to float32, and no host-device synchronisation in forward (on a GPU)."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import tiny_config, tiny_inputs
from transformers import BertConfig

from glip_hf import GlipForGrounding, speed_glip


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


def test_a_dyhead_layer_trains_under_compile_without_graph_breaks():
    """Forward and backward traced whole (aot_eager traces the backward too), deformable convs included, with
    eager's gradients."""
    model = _model()
    inputs = tiny_inputs(2, 256, 256, 8)
    layer = model.model.layers[0]  # eval: no dropout, so both runs compute the same thing; gradients still flow
    with torch.no_grad():
        vision = model.model.vision_backbone(inputs["pixel_values"])[1]
        text, _ = model.model.encode_text(inputs["input_ids"], inputs["attention_mask"])
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    gradients = []
    for run in (layer, compiled):
        leaves = [v.clone().requires_grad_() for v in vision]
        outputs = run(text, inputs["attention_mask"], *leaves)
        weights = [layer.dyconv.conv_same.conv.weight, layer.dyconv.conv_from_finer.conv.weight]
        gradients.append(torch.autograd.grad(sum(o.square().sum() for o in outputs), leaves + weights))
    for eager, traced in zip(*gradients):
        torch.testing.assert_close(traced, eager, atol=1e-5, rtol=1e-4)


def test_the_whole_model_runs_under_torch_compile():
    """torch.compile(model) as a user writes it (graph breaks allowed in the transformers towers) gives eager's
    outputs, for a batch with prompts of different lengths."""
    model = _model()
    inputs = tiny_inputs(2, 256, 256, 8)
    inputs["attention_mask"][1, 5:] = 0
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        eager, traced = model(**inputs), compiled(**inputs)
    for name in ("logits", "pred_boxes", "centerness"):
        torch.testing.assert_close(traced[name], eager[name])


def _fixed_dropout(generator_seed: int, logical_shape):
    """A dropout stand-in with a fixed keep pattern per logical element, so that two layouts drop the same
    probabilities: eager passes (B, H, N, T) and (B, H, T, N); folded passes (B, N, H*T) and (B, N, H, T)."""
    generator = torch.Generator().manual_seed(generator_seed)
    batch, heads, num_vision, num_text = logical_shape
    vision_keep = (torch.rand(logical_shape, generator=generator) > 0.3) / 0.7
    text_keep = (torch.rand(batch, heads, num_text, num_vision, generator=generator) > 0.3) / 0.7

    def dropout(probs, p=0.0, training=False):
        if probs.dim() == 3:  # folded, text direction
            return probs * text_keep.permute(0, 3, 1, 2).flatten(2)
        if probs.shape[1] == heads:  # eager
            return probs * (vision_keep if probs.shape[-1] == num_text else text_keep)
        return probs * vision_keep.transpose(1, 2)

    return dropout


def test_folded_attention_equals_the_eager_arithmetic_with_dropout_and_gradients(monkeypatch):
    """The folded cross-attention (the CPU default) against the original's arithmetic in training mode: same
    dropped probabilities, same outputs and the same gradients for the inputs and every projection."""
    from glip_hf.fusion_glip import GlipBiAttention

    config = tiny_config(text_config=BertConfig(hidden_size=48, num_attention_heads=4, intermediate_size=64),
                         fusion_embed_dim=64, fusion_num_heads=4, fusion_attention_dropout=0.3)
    torch.manual_seed(0)
    attention = GlipBiAttention(config).train()
    vision, text = torch.randn(2, 90, 32), torch.randn(2, 7, 48)
    text_mask = torch.ones(2, 7, dtype=torch.long)
    text_mask[1, 4:] = 0
    monkeypatch.setattr(torch.nn.functional, "dropout", _fixed_dropout(0, (2, 4, 90, 7)))
    results = {}
    monkeypatch.setattr(speed_glip, "FOLDED_CROSS_ATTENTION_DEVICES", ("cpu",))
    for implementation in ("eager", "sdpa"):  # "sdpa" runs the folded form on CPU
        config._attn_implementation = implementation
        attention.zero_grad()
        inputs = (vision.clone().requires_grad_(), text.clone().requires_grad_())
        vision_update, text_update = attention(*inputs, text_mask)
        (vision_update.square().sum() + text_update.sum()).backward()
        results[implementation] = [vision_update, text_update, *(x.grad for x in inputs),
                                   *(p.grad for p in attention.parameters())]
    assert len(results["sdpa"]) == 2 + 2 + 12
    for folded, eager in zip(results["sdpa"], results["eager"]):
        torch.testing.assert_close(folded, eager, atol=1e-5, rtol=1e-4)


def test_sdpa_attention_is_folded_on_cpu_and_names_are_checked(monkeypatch):
    model = _model()
    inputs = tiny_inputs(1, 256, 256, 8)
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, *args, **kwargs: calls.append(q.shape) or real_sdpa(q, *args, **kwargs))
    with torch.no_grad():
        model.model(**inputs)
    heads = model.config.fusion_num_heads
    # The BERT layers use SDPA; the cross-attention (heads of the fusion width) does not.
    assert calls and all(shape[1] != heads or shape[-1] != model.config.fusion_embed_dim // heads for shape in calls)
    with pytest.raises(ValueError, match="flash"):
        model.set_attn_implementation("flash")


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


@pytest.mark.parametrize("implementation", ["sdpa", "folded", "eager"])
def test_bf16_autocast_stays_close_to_float32(implementation, monkeypatch):
    model = _model()
    model.set_attn_implementation("eager" if implementation == "eager" else "sdpa")
    monkeypatch.setattr(speed_glip, "FOLDED_CROSS_ATTENTION_DEVICES", ("cpu",) if implementation == "folded" else ())
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


def test_prompts_in_groups_equal_one_pass():
    """max_prompts_per_pass runs the rows in groups after one vision pass, with the same outputs."""
    inputs = tiny_inputs(2, 256, 256, 8)
    rows = {k: v.repeat(3, 1) for k, v in inputs.items() if k != "pixel_values"}
    image_index = torch.tensor([0, 1, 1, 0, 1, 0])
    one_pass, grouped = _model(max_prompts_per_pass=6), _model(max_prompts_per_pass=4)
    with torch.no_grad():
        expected = one_pass(inputs["pixel_values"], **rows, image_index=image_index, output_hidden_states=True)
        calls = []
        hook = grouped.model.vision_backbone.register_forward_hook(lambda *args: calls.append(1))
        actual = grouped(inputs["pixel_values"], **rows, image_index=image_index, output_hidden_states=True)
        hook.remove()
    assert len(calls) == 1
    for name in ("logits", "pred_boxes", "centerness"):
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=1e-5)
    for actual_states, expected_states in zip(actual.vision_hidden_states, expected.vision_hidden_states):
        torch.testing.assert_close(actual_states, expected_states, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="max_prompts_per_pass"):
        tiny_config(max_prompts_per_pass=0)


def test_cpu_default_groups_prompt_rows_by_image_size(monkeypatch):
    """max_prompts_per_pass=None on CPU: large images one row per pass (faster there), small ones together, with
    the outputs of one pass."""
    model = _model()
    rows_per_call = []
    fuse = model.model._fuse
    monkeypatch.setattr(model.model, "_fuse", lambda *args: rows_per_call.append(args[2].shape[0]) or fuse(*args))
    with torch.no_grad():
        model(**tiny_inputs(2, 256, 256, 8))
        assert rows_per_call == [2]  # 2 x 256 x 256 pixels fit one pass
        rows_per_call.clear()
        inputs = tiny_inputs(2, 384, 384, 8)
        default = model(**inputs)
        model.config.max_prompts_per_pass = 2
        at_once = model(**inputs)
    assert rows_per_call == [1, 1, 2]
    for name in ("logits", "pred_boxes", "centerness"):
        torch.testing.assert_close(default[name], at_once[name], atol=1e-5, rtol=1e-5)


TRITON_CHECK = """
import torch
from torchvision.ops import deform_conv2d
from glip_hf.deform_conv_glip import RecomputedSamplingDeformConv, columns_times_weight
from glip_hf.deform_im2col_triton import deform_im2col
torch.manual_seed(0)
# (batch, channels, height, width, stride, out height, out width): odd sizes, channels not a multiple of the block,
# stride 2 (the finer level's conv), offsets large enough to leave the map.
for b, c, h, w, stride, oh, ow in [(2, 40, 9, 11, 1, 9, 11), (1, 33, 12, 10, 2, 6, 5), (2, 16, 5, 7, 1, 5, 7)]:
    x, offset = torch.randn(b, c, h, w), torch.randn(b, 18, oh, ow) * 3
    mask, weight, bias = torch.rand(b, 9, oh, ow), torch.randn(20, c, 3, 3), torch.randn(20)
    columns = deform_im2col(x, offset, mask, stride, 1, torch.float32)
    out = columns_times_weight(columns, weight, bias, (oh, ow), torch.float32, torch.float32)
    expected = deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    # Training on CUDA: the kernel samples in the forward, grid_sample again in the backward.
    tensors = [t.requires_grad_() for t in (x, offset, mask, weight, bias)]
    trained = RecomputedSamplingDeformConv.apply(*tensors, stride, torch.float32, True)  # use_triton
    projection = torch.randn(trained.shape)
    grads = torch.autograd.grad((trained * projection).sum(), tensors)
    expected = deform_conv2d(*tensors[:2], weight, bias, stride=stride, padding=1, mask=mask)
    torch.testing.assert_close(trained, expected, atol=1e-4, rtol=1e-4)
    for grad, reference in zip(grads, torch.autograd.grad((expected * projection).sum(), tensors)):
        torch.testing.assert_close(grad, reference, atol=1e-3, rtol=1e-3)
print("ok")
"""


def test_triton_deformable_sampling_kernel_matches_torchvision_in_the_interpreter():
    """The GPU kernel's logic, run by Triton's CPU interpreter (the CUDA run itself is the next test), alone and
    as the forward of the training conv."""
    pytest.importorskip("triton")
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel runs on CUDA")
def test_bf16_deformable_conv_on_cuda_matches_float32():
    from glip_hf.deform_conv_glip import ModulatedDeformConv2d

    torch.manual_seed(0)
    conv = ModulatedDeformConv2d(64, 64, stride=2).cuda()
    torch.nn.init.normal_(conv.weight, std=0.05)
    x = torch.randn(2, 64, 40, 56, device="cuda")
    offset, mask = torch.randn(2, 18, 20, 28, device="cuda") * 2, torch.rand(2, 9, 20, 28, device="cuda")
    with torch.no_grad():
        reference = conv(x, offset, mask)  # torchvision's kernel in float32
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fast = conv(x, offset, mask)  # the Triton sampling + bf16 product
    assert fast.dtype == torch.float32 and fast.shape == reference.shape
    assert ((fast - reference).norm() / reference.norm()) < 1e-2
    tensors = [t.requires_grad_() for t in (x, offset, mask, conv.weight, conv.bias)]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        trained = conv(x, offset, mask)  # the training conv: Triton sampling, grid_sample again in the backward
    assert ((trained.detach().float() - reference).norm() / reference.norm()) < 1e-2
    projection = torch.randn(trained.shape, device="cuda")
    grads = torch.autograd.grad((trained.float() * projection).sum(), tensors)
    reference_grads = torch.autograd.grad((conv(x, offset, mask) * projection).sum(), tensors)  # float32 kernel
    for grad, reference_grad in zip(grads, reference_grads):
        assert grad.dtype == torch.float32
        assert ((grad - reference_grad).norm() / reference_grad.norm()) < 2e-2
