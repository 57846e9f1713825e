"""A Triton kernel for the sampling half of the modulated deformable conv (inference on CUDA).

It writes the im2col columns (B, C*9, Ho*Wo) directly in the matrix product's dtype, with the bilinear weights
and the mask folded in, computing positions in float32. Compared with `grid_sample` + mask product + cast, this
is one pass that writes half the bytes, and the only memory-bound part of the deformable conv on a GPU.

It has no backward of its own: in training it is the forward of `RecomputedSamplingDeformConv`, whose backward
samples again through `grid_sample` and calls its backward.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

KERNEL_TAPS = 9


def triton_available(x: torch.Tensor) -> bool:
    """Whether the kernel can run on x: Triton is installed and x is on a CUDA device."""
    return triton is not None and x.is_cuda


if triton is not None:
    TAPS = tl.constexpr(KERNEL_TAPS)  # kernels read globals only as constexpr

    @triton.jit
    def _deform_im2col_kernel(
        x_ptr, offset_ptr, mask_ptr, out_ptr,
        channels, height, width, out_h, out_w, stride, padding,
        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ):
        # Grid: (output-location blocks, 9 taps, batch x channel blocks).
        block_p, tap, block_bc = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        channel_blocks = tl.cdiv(channels, BLOCK_C)
        batch, block_c = block_bc // channel_blocks, block_bc % channel_blocks
        locations = out_h * out_w
        p = block_p * BLOCK_P + tl.arange(0, BLOCK_P)
        p_ok = p < locations
        row, col = p // out_w, p % out_w

        # Offsets hold (dy, dx) per tap; the mask one weight per tap (as torchvision and the original).
        offset_base = offset_ptr + batch.to(tl.int64) * 2 * TAPS * locations
        dy = tl.load(offset_base + (2 * tap) * locations + p, mask=p_ok, other=0.0).to(tl.float32)
        dx = tl.load(offset_base + (2 * tap + 1) * locations + p, mask=p_ok, other=0.0).to(tl.float32)
        modulation = tl.load(mask_ptr + batch.to(tl.int64) * TAPS * locations + tap * locations + p,
                             mask=p_ok, other=0.0).to(tl.float32)
        y = (row * stride - padding + tap // 3).to(tl.float32) + dy
        x = (col * stride - padding + tap % 3).to(tl.float32) + dx

        y_floor, x_floor = tl.floor(y), tl.floor(x)
        weight_y1, weight_x1 = y - y_floor, x - x_floor
        weight_y0, weight_x0 = 1.0 - weight_y1, 1.0 - weight_x1
        y0, x0 = y_floor.to(tl.int32), x_floor.to(tl.int32)
        y1, x1 = y0 + 1, x0 + 1
        # Corners outside the map read as zero.
        y0_ok, y1_ok = (y0 >= 0) & (y0 < height), (y1 >= 0) & (y1 < height)
        x0_ok, x1_ok = (x0 >= 0) & (x0 < width), (x1 >= 0) & (x1 < width)

        c = block_c * BLOCK_C + tl.arange(0, BLOCK_C)
        c_ok = c < channels
        plane = height * width
        x_base = x_ptr + batch.to(tl.int64) * channels * plane + c[:, None].to(tl.int64) * plane
        value = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
        for corner in tl.static_range(4):
            cy = y1 if corner // 2 == 1 else y0
            cx = x1 if corner % 2 == 1 else x0
            ok = (y1_ok if corner // 2 == 1 else y0_ok) & (x1_ok if corner % 2 == 1 else x0_ok) & p_ok
            weight = (weight_y1 if corner // 2 == 1 else weight_y0) * (weight_x1 if corner % 2 == 1 else weight_x0)
            sample = tl.load(x_base + (cy * width + cx)[None, :], mask=c_ok[:, None] & ok[None, :], other=0.0)
            value += sample.to(tl.float32) * (weight * modulation)[None, :]

        out_rows = c.to(tl.int64) * TAPS + tap
        out_base = out_ptr + batch.to(tl.int64) * channels * TAPS * locations
        tl.store(out_base + out_rows[:, None] * locations + p[None, :], value.to(out_ptr.dtype.element_ty),
                 mask=c_ok[:, None] & p_ok[None, :])


def deform_im2col(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, stride: int, padding: int,
                  dtype: torch.dtype) -> torch.Tensor:
    """x (B, C, H, W), offset (B, 18, Ho, Wo), mask (B, 9, Ho, Wo) -> columns (B, C*9, Ho*Wo) in `dtype`.

    Column c*9 + k holds channel c sampled at tap k (row-major 3x3), times the tap's mask.
    """
    batch, channels, height, width = x.shape
    out_h, out_w = offset.shape[-2:]
    x, offset, mask = x.contiguous(), offset.contiguous(), mask.contiguous()
    columns = torch.empty(batch, channels * KERNEL_TAPS, out_h * out_w, device=x.device, dtype=dtype)
    block_c, block_p = 32, 128
    grid = (triton.cdiv(out_h * out_w, block_p), KERNEL_TAPS, batch * triton.cdiv(channels, block_c))
    _deform_im2col_kernel[grid](
        x, offset, mask, columns, channels, height, width, out_h, out_w, stride, padding,
        BLOCK_C=block_c, BLOCK_P=block_p,
    )
    return columns


__all__ = ["deform_im2col", "triton_available"]
