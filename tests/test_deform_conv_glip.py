"""The modulated deformable conv without a compiled extension: forward and backward against torchvision's kernel,
and the training path that keeps only its inputs for the backward (it samples again there)."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import deform_conv2d

from glip_hf.deform_conv_glip import ModulatedDeformConv2d, _deform_conv2d_sampled, _sampled_deform_conv

# (batch, channels, height, width, stride): odd sizes, stride 2 as in the finer level's conv, and channels that the
# CPU samples in groups (48: 3 groups of 16).
CASES = [(2, 6, 9, 11, 1), (1, 5, 12, 10, 2), (2, 48, 7, 8, 2)]
OUT_CHANNELS = 4


def _operands(batch, channels, height, width, stride, dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1

    def random(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, dtype=dtype) * scale).requires_grad_()

    x = random(batch, channels, height, width)
    offset = random(batch, 18, out_h, out_w, scale=3.0)  # large enough for taps to leave the map
    mask = torch.rand(batch, 9, out_h, out_w, generator=generator, dtype=dtype).requires_grad_()
    return x, offset, mask, random(OUT_CHANNELS, channels, 3, 3), random(OUT_CHANNELS)


def _conv(weight, bias, stride):
    conv = ModulatedDeformConv2d(weight.shape[1], weight.shape[0], stride).to(weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv


def _gradients(out, tensors, seed=1):
    """Gradients of a random projection of `out` with respect to those of `tensors` that require one."""
    projection = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    wanted = [t for t in tensors if t.requires_grad]
    return torch.autograd.grad((out * projection).sum(), wanted)


@pytest.mark.parametrize("case", CASES)
def test_training_conv_matches_torchvision_forward_and_backward(case):
    x, offset, mask, weight, bias = _operands(*case)
    stride = case[-1]
    conv = _conv(weight, bias, stride)
    out = conv(x, offset, mask)
    expected = deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    torch.testing.assert_close(out, expected)
    with torch.no_grad():  # inference: no recompute, the mask multiplied in place
        torch.testing.assert_close(conv(x, offset, mask), expected)
    ours = _gradients(out, (x, offset, mask, conv.weight, conv.bias))
    theirs = _gradients(expected, (x, offset, mask, weight, bias))
    for name, actual, reference in zip(("x", "offset", "mask", "weight", "bias"), ours, theirs):
        torch.testing.assert_close(actual, reference, msg=lambda text, name=name: f"gradient of {name}: {text}")


def test_training_conv_with_frozen_inputs_gives_the_remaining_gradients():
    """Offsets and mask from a frozen branch, then a frozen conv (a linear probe's case): the gradients that are
    asked for are those of torchvision's kernel, and none is made for the others."""
    x, offset, mask, weight, bias = _operands(*CASES[0])
    offset, mask = offset.detach(), mask.detach()
    conv = _conv(weight, bias, 1)
    out = conv(x, offset, mask)
    expected = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    for actual, reference in zip(_gradients(out, (x, conv.weight, conv.bias)), _gradients(expected, (x, weight, bias))):
        torch.testing.assert_close(actual, reference)
    conv.requires_grad_(False)
    out = conv(x, offset, mask)
    (grad_x,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(grad_x, torch.autograd.grad(deform_conv2d(x, offset, weight, bias, padding=1,
                                                                         mask=mask).sum(), x)[0])
    assert conv.weight.grad is None and conv.bias.grad is None


def _saved_bytes(function) -> int:
    """Bytes of the distinct storages that autograd keeps for the backward while `function()` runs."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        function()
    return sum(storages.values())


def test_training_conv_keeps_only_its_inputs_for_the_backward():
    x, offset, mask, weight, bias = _operands(2, 16, 24, 24, 1, dtype=torch.float32)
    conv = _conv(weight, bias, 1)
    inputs_bytes = sum(t.numel() * t.element_size() for t in (x, offset, mask, conv.weight))
    kept = _saved_bytes(lambda: conv(x, offset, mask))
    # Autograd through the sampling keeps the samples and the masked columns, each 9x the input: the measure sees it.
    through_sampling = _saved_bytes(lambda: _deform_conv2d_sampled(x, offset, mask, conv.weight, conv.bias))
    assert through_sampling > 2 * 9 * x.numel() * x.element_size()
    assert kept <= inputs_bytes


def test_reduced_precision_product_keeps_float32_sampling_and_close_gradients():
    """The path that autocast takes on CUDA (bf16 product, float32 sampling), run on the CPU."""
    x, offset, mask, weight, bias = _operands(*CASES[1], dtype=torch.float32)
    tensors = (x, offset, mask, weight, bias)
    out = _sampled_deform_conv(*tensors, stride=2, matmul_dtype=torch.bfloat16)
    expected = deform_conv2d(x, offset, weight, bias, stride=2, padding=1, mask=mask)
    assert out.dtype == torch.bfloat16
    assert (out.float() - expected).norm() / expected.norm() < 1e-2
    ours, theirs = _gradients(out.float(), tensors), _gradients(expected, tensors)
    for actual, reference in zip(ours, theirs):
        assert actual.dtype == torch.float32
        assert (actual - reference).norm() / reference.norm() < 2e-2
