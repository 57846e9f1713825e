"""Modulated deformable 3x3 convolution (DCNv2) without a compiled extension of our own.

Two equivalent implementations: torchvision's `deform_conv2d` kernel, and a `grid_sample` + matrix-product form
whose backward runs on PyTorch's threaded kernels. Both sample the input bilinearly at
`p * stride - padding + tap + offset`, with zeros outside the image, and weight each tap by its mask. Which one runs
on which device is decided in `speed_glip`.

Under autocast the sampling always runs in float32: positions such as 150.3 px are not representable in bf16.
On CUDA the matrix product then runs in the autocast dtype, as autocast does for an ordinary convolution (it is
most of the deformable conv's arithmetic); there the sampling can be one Triton kernel that writes the columns in
that dtype (`deform_im2col_triton`).

In training the samples are not kept for the backward (`RecomputedSamplingDeformConv`): autograd through
`grid_sample` would keep the float32 samples and the masked columns, 9x the input each. The backward samples
again, from the kept input, offsets and mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torchvision.ops import deform_conv2d

# Imported by name (not `from . import`): transformers' remote code copies the modules found in such lines.
from .deform_im2col_triton import deform_im2col
from .precision_glip import cpu_has_fast_bf16
from .speed_glip import deform_conv_uses_torchvision, grid_sample_channel_groups, sampling_uses_triton

KERNEL_SIZE = 3


def _sampling_grid(offset: torch.Tensor, input_size, stride: int, padding: int) -> torch.Tensor:
    """(B, K*Ho, Wo, 2) grid_sample coordinates (x, y in [-1, 1], align_corners=False) for every tap and output.

    offset (B, 2K, Ho, Wo) holds (dy, dx) per tap, taps in row-major order, as torchvision and the original.
    """
    batch, _, out_h, out_w = offset.shape
    height, width = input_size
    taps = torch.arange(KERNEL_SIZE, device=offset.device, dtype=offset.dtype)
    tap_y, tap_x = torch.meshgrid(taps, taps, indexing="ij")  # (3, 3) each, row-major taps
    rows = torch.arange(out_h, device=offset.device, dtype=offset.dtype) * stride - padding
    cols = torch.arange(out_w, device=offset.device, dtype=offset.dtype) * stride - padding
    offset = offset.view(batch, KERNEL_SIZE * KERNEL_SIZE, 2, out_h, out_w)
    y = rows.view(1, 1, -1, 1) + tap_y.reshape(1, -1, 1, 1) + offset[:, :, 0]
    x = cols.view(1, 1, 1, -1) + tap_x.reshape(1, -1, 1, 1) + offset[:, :, 1]
    # Pixel i sits at normalised (2i + 1) / size - 1 when align_corners=False.
    grid = torch.stack(((2 * x + 1) / width - 1, (2 * y + 1) / height - 1), dim=-1)
    return grid.reshape(batch, -1, out_w, 2)


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will record an operation on these tensors."""
    return torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors)


def _grid_sample_operands(x, offset, stride: int, padding: int):
    """x and the sampling grid as `grid_sample` takes them, the channels in `speed_glip`'s groups as separate images.

    Returns x (B*G, C/G, H, W), grid (B*G, K*Ho, Wo, 2) and the number of groups G.
    """
    batch, channels = x.shape[:2]
    grid = _sampling_grid(offset, x.shape[-2:], stride, padding).to(x.dtype)
    groups = grid_sample_channel_groups(x)
    if groups > 1:
        x = x.reshape(batch * groups, channels // groups, *x.shape[-2:])
        grid = grid.repeat_interleave(groups, dim=0)
    return x, grid, groups


def _bilinear_samples(grouped_x, grid, batch: int, channels: int) -> torch.Tensor:
    """The input sampled at every tap of every output, from `_grid_sample_operands`: (B, C, K, Ho, Wo), before
    the mask."""
    sampled = F.grid_sample(grouped_x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    taps = KERNEL_SIZE * KERNEL_SIZE
    return sampled.view(batch, channels, taps, grid.shape[1] // taps, grid.shape[2])


def sampled_columns(x, offset, mask, stride: int = 1, padding: int = 1) -> torch.Tensor:
    """The im2col columns (B, C*9, Ho*Wo) of the deformable conv, in x's dtype: column c*9 + k holds channel c
    sampled bilinearly at tap k (row-major 3x3), times the tap's mask."""
    batch, channels = x.shape[:2]
    grouped_x, grid, _ = _grid_sample_operands(x, offset, stride, padding)
    sampled = _bilinear_samples(grouped_x, grid, batch, channels)
    # In place where autograd keeps no copy of the samples: a fresh buffer this large costs more than the multiply.
    sampled = sampled * mask.unsqueeze(1) if needs_grad(sampled, mask) else sampled.mul_(mask.unsqueeze(1))
    return sampled.reshape(batch, channels * KERNEL_SIZE * KERNEL_SIZE, -1)


def _deform_conv2d_sampled(x, offset, mask, weight, bias, stride: int = 1, padding: int = 1,
                          matmul_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Same result as `torchvision.ops.deform_conv2d(x, offset, weight, bias, stride, padding, mask=mask)` for 3x3
    kernels, through `grid_sample` and one matrix product per image (in `matmul_dtype` when given, else x's)."""
    columns = sampled_columns(x, offset, mask, stride, padding)
    return columns_times_weight(columns, weight, bias, offset.shape[-2:], matmul_dtype or x.dtype, x.dtype)


def columns_times_weight(columns, weight, bias, out_size, matmul_dtype, out_dtype) -> torch.Tensor:
    """The product half of the deformable conv: (Cout, Cin*9) weight @ (B, Cin*9, Ho*Wo) columns + bias, in
    `matmul_dtype`, returned as (B, Cout, Ho, Wo) in `out_dtype`."""
    out = (weight.reshape(weight.shape[0], -1).to(matmul_dtype) @ columns.to(matmul_dtype)).to(out_dtype)
    return (out + bias.to(out_dtype).view(1, -1, 1)).view(columns.shape[0], -1, *out_size)


class ModulatedDeformConv2d(nn.Module):
    """3x3 convolution that becomes a modulated deformable convolution (DCNv2) when offsets are given."""

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, KERNEL_SIZE, KERNEL_SIZE))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x, offset=None, mask=None):
        if offset is None:
            return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=1)
        on_cuda = x.is_cuda
        autocast = torch.is_autocast_enabled(x.device.type)
        if x.dtype in (torch.float32, torch.float64) and not autocast:
            if deform_conv_uses_torchvision(x):
                return _torchvision_deform_conv(x, offset, mask, self.weight, self.bias, self.stride)
            return _sampled_deform_conv(x, offset, mask, self.weight, self.bias, self.stride, x.dtype)
        # Sampling positions are sensitive to rounding (and torchvision's kernel has no autocast rule for reduced
        # precision): sampling runs in float32 under autocast / bf16; see the module docstring for the product.
        reduced = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
        # The product in the reduced dtype where the hardware multiplies in it (a CPU without bf16 units would
        # convert every operand back to float32, slower than float32 itself).
        product_dtype = reduced if on_cuda or (reduced == torch.bfloat16 and cpu_has_fast_bf16()) else torch.float32
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = _sampled_deform_conv(x.float(), offset.float(), mask.float(), self.weight.float(),
                                       self.bias.float(), self.stride, product_dtype)
        return out.to(x.dtype)


def _sampled_deform_conv(x, offset, mask, weight, bias, stride, matmul_dtype):
    """The deformable conv as sampling (Triton or `grid_sample`, see `speed_glip`) + product in `matmul_dtype`;
    its output is in `matmul_dtype`."""
    use_triton = sampling_uses_triton(x)
    if needs_grad(x, offset, mask, weight, bias):
        return RecomputedSamplingDeformConv.apply(x, offset, mask, weight, bias, stride, matmul_dtype, use_triton)
    columns = _columns(x, offset, mask, stride, matmul_dtype, use_triton)
    return columns_times_weight(columns, weight, bias, offset.shape[-2:], matmul_dtype, matmul_dtype)


def _columns(x, offset, mask, stride: int, matmul_dtype, use_triton: bool) -> torch.Tensor:
    """The im2col columns: Triton writes them in `matmul_dtype`; `grid_sample` in x's dtype (the product casts)."""
    if use_triton:
        return deform_im2col(x, offset, mask, stride, 1, matmul_dtype)
    return sampled_columns(x, offset, mask, stride)


class RecomputedSamplingDeformConv(torch.autograd.Function):
    """Deformable conv for training that keeps only its inputs: the backward samples again.

    The forward samples (with the Triton kernel when `use_triton`, else `grid_sample`) and multiplies by the weight in
    `matmul_dtype`. The backward samples again through `grid_sample` in the inputs' dtype (float32 under autocast)
    for the weight's gradient, and calls `grid_sample`'s own backward for those of x and the offsets, one conv at a
    time. It spells the chain rule out rather than calling `torch.autograd.grad`, which `torch.compile` cannot trace.
    """

    @staticmethod
    def forward(ctx, x, offset, mask, weight, bias, stride, matmul_dtype, use_triton):
        ctx.save_for_backward(x, offset, mask, weight)
        ctx.stride, ctx.matmul_dtype = stride, matmul_dtype
        columns = _columns(x, offset, mask, stride, matmul_dtype, use_triton)
        return columns_times_weight(columns, weight, bias, offset.shape[-2:], matmul_dtype, matmul_dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        x, offset, mask, weight = ctx.saved_tensors
        wants_x, wants_offset, wants_mask, wants_weight, wants_bias = ctx.needs_input_grad[:5]
        batch, out_channels = grad_output.shape[:2]
        grad_output = grad_output.reshape(batch, out_channels, -1).to(ctx.matmul_dtype)
        grouped_x, grid, groups = _grid_sample_operands(x, offset, ctx.stride, 1)
        samples = _bilinear_samples(grouped_x, grid, *x.shape[:2])  # (B, C, K, Ho, Wo)
        grad_weight = grad_bias = grad_x = grad_offset = grad_mask = None
        if wants_weight:
            columns = (samples * mask.unsqueeze(1)).flatten(1, 2).flatten(2).to(ctx.matmul_dtype)
            grad_weight = (grad_output @ columns.transpose(1, 2)).sum(0).view_as(weight).to(weight.dtype)
        if wants_bias:
            grad_bias = grad_output.sum((0, 2)).to(weight.dtype)
        if wants_x or wants_offset or wants_mask:
            grad_columns = weight.reshape(out_channels, -1).to(ctx.matmul_dtype).t() @ grad_output
            grad_samples = grad_columns.to(x.dtype).view_as(samples)
            if wants_mask:
                grad_mask = (grad_samples * samples).sum(1)
            grad_samples = grad_samples.mul_(mask.unsqueeze(1))
            if wants_x or wants_offset:
                grad_x, grad_offset = _grid_sample_backward(grad_samples, grouped_x, grid, groups, wants_x,
                                                            wants_offset)
                grad_x = grad_x.view_as(x) if wants_x else None
        return grad_x, grad_offset, grad_mask, grad_weight, grad_bias, None, None, None


def _grid_sample_backward(grad_samples, grouped_x, grid, groups: int, wants_x: bool, wants_offset: bool):
    """Gradients of the grouped input and of the offsets from those of the (B, C, K, Ho, Wo) bilinear samples taken
    with `_grid_sample_operands`' grouped input, grid and number of groups."""
    batch, channels, taps, out_h, out_w = grad_samples.shape
    grad_grouped = grad_samples.reshape(batch * groups, channels // groups, taps * out_h, out_w)
    # aten's backward of grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False): modes 0 and 0.
    grad_x, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
        grad_grouped, grouped_x, grid, 0, 0, False, [wants_x, wants_offset])
    grad_offset = None
    if wants_offset:
        # The grid holds ((2x + 1) / W - 1, (2y + 1) / H - 1), offsets (dy, dx) per tap: d grid / d offset = 2 / size.
        grad_grid = grad_grid.view(batch, groups, taps, out_h, out_w, 2).sum(1)
        height, width = grouped_x.shape[-2:]
        grad_offset = torch.stack((grad_grid[..., 1] * (2 / height), grad_grid[..., 0] * (2 / width)), dim=2)
        grad_offset = grad_offset.reshape(batch, 2 * taps, out_h, out_w)
    return grad_x, grad_offset


def _torchvision_deform_conv(x, offset, mask, weight, bias, stride):
    return deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)


__all__ = [
    "ModulatedDeformConv2d",
    "RecomputedSamplingDeformConv",
    "columns_times_weight",
    "sampled_columns",
]
