"""Every device-specific speed decision of GLIP, in one place. None of them changes what the model computes.

Each setting is a module attribute read at call time, so assigning it (for example
`glip_hf.speed_glip.CPU_CHANNELS_PER_GROUP = 32`) takes effect on the next forward. What runs where by default:

| piece | CUDA | CPU (and other devices) |
| --- | --- | --- |
| deformable conv, float32 | torchvision's kernel | `grid_sample` + one matrix product |
| deformable conv, autocast / bf16 | Triton sampling (`grid_sample` without Triton), product in bf16 | `grid_sample` in float32 |
| `grid_sample` channels | all at once | groups of `CPU_CHANNELS_PER_GROUP` |
| cross-attention under `attn_implementation="sdpa"` | SDPA | the folded form |
| prompt rows per DyHead pass (`max_prompts_per_pass=None`) | all | as many as make `CPU_PIXELS_PER_PASS` |

Measurements behind these choices are in benchmarks/README.md.
"""

from __future__ import annotations

import torch

from .deform_im2col_triton import triton_available

# Devices on which a float32 deformable conv (outside autocast) runs torchvision's kernel; elsewhere it samples
# with `grid_sample`, whose backward runs on PyTorch's threaded kernels (torchvision's CPU backward does not).
TORCHVISION_DEFORM_CONV_DEVICES = ("cuda",)
# Whether the sampling half of the deformable conv uses the Triton kernel where Triton runs (CUDA tensors).
USE_TRITON_SAMPLING = True
# Channels per `grid_sample` call on a CPU: its CPU kernels split work between threads by image only, so the
# channels go in as separate images of this many channels each (0: no groups). Counts it does not divide stay whole.
CPU_CHANNELS_PER_GROUP = 16
# Pixels of prompt rows per DyHead pass on a CPU when `config.max_prompts_per_pass` is None: large maps run faster
# a few rows at a time (caches), small ones together (per-operation overhead).
CPU_PIXELS_PER_PASS = 512 * 512
# Devices on which `attn_implementation="sdpa"` runs the cross-attention in its folded form (the visual tokens'
# projections folded into the few text tokens); elsewhere it runs SDPA. Both equal the eager arithmetic.
FOLDED_CROSS_ATTENTION_DEVICES = ("cpu",)


def deform_conv_uses_torchvision(x: torch.Tensor) -> bool:
    """Whether a float32 deformable conv on x runs torchvision's kernel (else `grid_sample` + product)."""
    return x.device.type in TORCHVISION_DEFORM_CONV_DEVICES


def sampling_uses_triton(x: torch.Tensor) -> bool:
    """Whether the deformable conv samples x with the Triton kernel (else `grid_sample`)."""
    return USE_TRITON_SAMPLING and triton_available(x)


def grid_sample_channel_groups(x: torch.Tensor) -> int:
    """How many channel groups `grid_sample` sees as separate images for x (B, C, H, W)."""
    channels = x.shape[1]
    if x.device.type != "cpu" or not CPU_CHANNELS_PER_GROUP or channels % CPU_CHANNELS_PER_GROUP:
        return 1
    return channels // CPU_CHANNELS_PER_GROUP


def prompt_rows_per_pass(pixel_values: torch.Tensor, rows: int) -> int:
    """Prompt rows per DyHead pass when the config leaves it open: all of them, or on a CPU as many as make
    `CPU_PIXELS_PER_PASS` pixels (at least one)."""
    if pixel_values.device.type != "cpu":
        return rows
    return max(1, CPU_PIXELS_PER_PASS // (pixel_values.shape[-2] * pixel_values.shape[-1]))


def cross_attention_form(attn_implementation: str | None, device: torch.device) -> str:
    """"eager" (the original's arithmetic), "sdpa" or "folded" for the cross-attention, from the model's
    `attn_implementation` and the device of its inputs."""
    if attn_implementation == "eager":
        return "eager"
    return "folded" if device.type in FOLDED_CROSS_ATTENTION_DEVICES else "sdpa"


__all__ = [
    "CPU_CHANNELS_PER_GROUP",
    "CPU_PIXELS_PER_PASS",
    "FOLDED_CROSS_ATTENTION_DEVICES",
    "TORCHVISION_DEFORM_CONV_DEVICES",
    "USE_TRITON_SAMPLING",
    "cross_attention_form",
    "deform_conv_uses_torchvision",
    "grid_sample_channel_groups",
    "prompt_rows_per_pass",
    "sampling_uses_triton",
]
