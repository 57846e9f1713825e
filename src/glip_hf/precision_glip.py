"""Which inference precision a device runs fastest, and autocast to it.

bf16 pays off where the hardware multiplies in bf16: CUDA GPUs with bf16 support, and CPUs with AVX512-BF16 or AMX
(Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later). Elsewhere a CPU converts bf16 to float32 for
every product, which is slower than float32 itself, so float32 stays the default there.
"""

from __future__ import annotations

import contextlib
import functools

import torch

PRECISIONS = ("auto", "fp32", "bf16")


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles), as oneDNN's kernels need."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def default_precision(device) -> str:
    """"bf16" on devices that multiply bf16 in hardware, else "fp32"."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def inference_autocast(device, precision: str = "auto"):
    """A context for inference on `device`: bf16 autocast when `precision` is "bf16" (or "auto" and the device has
    fast bf16), else nothing. Use it around `model(**inputs)`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if precision == "auto":
        precision = default_precision(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


__all__ = ["PRECISIONS", "cpu_has_fast_bf16", "default_precision", "inference_autocast"]
