"""Modulated deformable 3x3 convolution (DCNv2) without a compiled extension of our own.

Two equivalent implementations: torchvision's `deform_conv2d` kernel (used on CUDA in float32), and a
`grid_sample` + matrix-product form (used elsewhere: torchvision's CPU backward is single-threaded and dominated a
CPU training step by 70%, while this form runs on PyTorch's threaded kernels and autograd). Both sample the input
bilinearly at `p * stride - padding + tap + offset`, with zeros outside the image, and weight each tap by its mask.

Under autocast the sampling always runs in float32: positions such as 150.3 px are not representable in bf16.
On CUDA the matrix product then runs in the autocast dtype, as autocast does for an ordinary convolution (it is
most of the deformable conv's arithmetic, and torchvision's kernel would keep it in float32); at inference the
sampling there is one Triton kernel that writes the columns in that dtype (`deform_im2col_triton`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

# Imported by name (not `from . import`): transformers' remote code copies the modules found in such lines.
from .deform_im2col_triton import deform_im2col, triton_available

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


def deform_conv2d_sampled(x, offset, mask, weight, bias, stride: int = 1, padding: int = 1,
                          matmul_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Same result as `torchvision.ops.deform_conv2d(x, offset, weight, bias, stride, padding, mask=mask)` for 3x3
    kernels, through `grid_sample` and one matrix product per image (in `matmul_dtype` when given, else x's)."""
    batch, channels = x.shape[:2]
    out_h, out_w = offset.shape[-2:]
    grid = _sampling_grid(offset, x.shape[-2:], stride, padding)
    sampled = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = sampled.view(batch, channels, KERNEL_SIZE * KERNEL_SIZE, out_h, out_w)
    # In place where autograd keeps no copy of the samples: a fresh buffer this large costs more than the multiply.
    sampled = sampled * mask.unsqueeze(1) if needs_grad(sampled, mask) else sampled.mul_(mask.unsqueeze(1))
    columns = sampled.reshape(batch, channels * KERNEL_SIZE * KERNEL_SIZE, out_h * out_w)
    return columns_times_weight(columns, weight, bias, (out_h, out_w), matmul_dtype or x.dtype, x.dtype)


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
            operation = _torchvision_deform_conv if on_cuda else deform_conv2d_sampled
            return operation(x, offset, mask, self.weight, self.bias, self.stride)
        # Sampling positions are sensitive to rounding (and torchvision's kernel has no autocast rule for reduced
        # precision): sampling runs in float32 under autocast / bf16; see the module docstring for the product.
        reduced = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            if on_cuda and triton_available(x) and not needs_grad(x, offset, mask, self.weight, self.bias):
                columns = deform_im2col(x, offset, mask, self.stride, 1, reduced)
                out = columns_times_weight(columns, self.weight, self.bias, offset.shape[-2:], reduced, reduced)
            else:
                out = deform_conv2d_sampled(x.float(), offset.float(), mask.float(), self.weight.float(),
                                            self.bias.float(), self.stride, matmul_dtype=reduced if on_cuda else None)
        return out.to(x.dtype)


def _torchvision_deform_conv(x, offset, mask, weight, bias, stride):
    return deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)


__all__ = ["ModulatedDeformConv2d", "columns_times_weight", "deform_conv2d_sampled"]
