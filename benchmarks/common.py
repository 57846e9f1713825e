"""Shared pieces of the benchmarks: models with the published architectures and random weights, inputs, timing."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

COCO_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
]


def device_description(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def test_image(height: int, width: int, seed: int = 0) -> Image.Image:
    """A smooth random photo-like image (noise is atypical for detectors' post-processing load)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BILINEAR)


def test_image_tensor(height: int, width: int, seed: int, device: str) -> torch.Tensor:
    """`test_image` as a uint8 (3, H, W) tensor on `device`: an image already in memory."""
    array = np.asarray(test_image(height, width, seed)).transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def measured_bf16_matmul_tflops(device: str, size: int = 8192, repeats: int = 10) -> float | None:
    """The device's bf16 matrix-product rate, measured on random (size x size) operands (None off CUDA)."""
    if device != "cuda":
        return None
    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    timing = timed(lambda: a @ b, repeats, 3, device)
    return 2 * size**3 / timing["median_s"] / 1e12


def glip_tiny(device: str):
    """GLIP-T (C) architecture with random weights, and its processor with the bundled bert-base vocabulary (the
    torchvision-backend image processor: the benchmarks preprocess on the model's device)."""
    from glip_hf import GlipConfig, GlipForGrounding, GlipImageProcessorFast, GlipProcessor
    from glip_hf.processing_glip import load_tokenizer

    torch.manual_seed(0)
    model = GlipForGrounding(GlipConfig.from_preset("glip-t-c")).to(device).eval()
    return model, GlipProcessor(GlipImageProcessorFast(), load_tokenizer())


def grounding_dino_tiny(device: str):
    """transformers' Grounding DINO with the Grounding DINO-T architecture (Swin-T, BERT-base), random weights."""
    from transformers import (
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    from glip_hf.processing_glip import load_tokenizer

    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig()).to(device).eval()
    return model, GroundingDinoProcessor(GroundingDinoImageProcessor(), load_tokenizer())


ATTENTION_CHOICES = ("default", "eager", "sdpa", "folded")


def add_attention_argument(parser) -> None:
    """`--attention`: GLIP's attention, applied with `apply_attention`."""
    parser.add_argument("--attention", default="default", choices=ATTENTION_CHOICES,
                        help="GLIP's attention: default (attn_implementation='sdpa', the cross-attention folded on CPU "
                             "as speed_glip decides), eager (the original's arithmetic), or sdpa / folded (the "
                             "cross-attention forced to that form)")


def apply_attention(model, choice: str) -> None:
    """Set GLIP's attention as `--attention` asks (see `add_attention_argument`)."""
    from glip_hf import speed_glip

    if choice == "default":
        return
    model.set_attn_implementation("eager" if choice == "eager" else "sdpa")
    if choice in ("sdpa", "folded"):
        speed_glip.FOLDED_CROSS_ATTENTION_DEVICES = (model.device.type,) if choice == "folded" else ()


def timed(function, repeats: int, warmup: int, device: str) -> dict:
    """Median / min seconds of `function()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        function()
    seconds = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "runs": repeats}


def timed_alternately(functions: dict, repeats: int, warmup: int, device: str) -> dict:
    """`timed` for several functions whose runs alternate (a, b, a, b, ...): on a noisy machine a slow spell then
    falls on all of them, so their ratio holds better than with all runs of one after all of the other."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    seconds = {name: [] for name in functions}
    for round_index in range(repeats):
        for name, function in functions.items():
            seconds[name].append(timed(function, 1, 0, device)["median_s"])
            print(f"  run {round_index + 1}/{repeats} {name}: {seconds[name][-1]:.2f} s", file=sys.stderr, flush=True)
    return {name: {"median_s": statistics.median(values), "min_s": min(values), "runs": repeats, "seconds": values}
            for name, values in seconds.items()}


def write_results(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=float))
    print(f"results written to {path}")
