"""Inference, end to end (preprocessing of an in-memory image, model, post-processing), GLIP-T next to Grounding
DINO-T in the same process, same image, same 80 COCO class names as the prompt.

    python benchmarks/bench_inference.py [--device cpu] [--size 512] [--batch 1] [--bf16] [--output results.json]

CPU default: 512x512, batch 1, fp32. On a GPU: `--device cuda --size 800x1333 --batch 8 --bf16` for throughput,
`--batch 1` for latency. Reports seconds per call, images/s, peak memory and, for GLIP, FLOPs per image.
"""

from __future__ import annotations

import argparse
import resource
from pathlib import Path

import torch
from common import (
    COCO_NAMES,
    device_description,
    glip_tiny,
    grounding_dino_tiny,
    test_image,
    timed,
    write_results,
)


def parse_size(text: str) -> tuple[int, int]:
    height, _, width = text.partition("x")
    return int(height), int(width or height)


def glip_call(model, processor, images, device, bf16):
    def run():
        inputs = processor(images=images, text=[COCO_NAMES] * len(images))
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            outputs = model(**inputs)
        return processor.post_process_grounded_object_detection(outputs, inputs, threshold=0.0)
    return run


def grounding_dino_call(model, processor, images, device, bf16):
    text = ". ".join(COCO_NAMES) + "."
    sizes = [image.size[::-1] for image in images]

    def run():
        inputs = processor(images=images, text=[text] * len(images), return_tensors="pt").to(device)
        with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            outputs = model(**inputs)
        return processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=sizes)
    return run


def glip_flops_per_image(model, processor, image, device) -> float:
    """FLOPs of one forward, counted by torch's FlopCounterMode. Off CUDA the deformable convs run as grid_sample +
    matmul, whose matmuls are counted; on CUDA torchvision's kernel is not, so its 2*Cin*9*Cout*H*W is added."""
    from torch.utils.flop_counter import FlopCounterMode

    inputs = processor(images=[image], text=[COCO_NAMES])
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        outputs = model(**inputs)
    flops = counter.get_total_flops()
    if device == "cuda":
        channels = model.config.head_channels
        locations = sum(h * w for h, w in outputs.spatial_shapes.tolist())
        flops += len(model.model.layers) * 3 * 2 * channels * 9 * channels * locations
    return float(flops)


def peak_memory_gib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process high-water mark (Linux: KiB)


def measure(name, build, call, args, images) -> dict:
    model, processor = build(args.device)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timing = timed(call(model, processor, images, args.device, args.bf16), args.repeats, args.warmup, args.device)
    result = {"model": name, **timing, "images_per_s": len(images) / timing["median_s"],
              "peak_memory_gib": peak_memory_gib(args.device)}
    if name == "GLIP-T":
        result["flops_per_image"] = glip_flops_per_image(model, processor, images[0], args.device)
        result["achieved_tflops"] = result["flops_per_image"] * result["images_per_s"] / 1e12
    del model
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="512", help="HxW or S (square) of the test image")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/inference.json"))
    args = parser.parse_args(argv)
    height, width = parse_size(args.size)
    images = [test_image(height, width, seed) for seed in range(args.batch)]
    rows = [
        measure("GLIP-T", glip_tiny, glip_call, args, images),
        measure("Grounding DINO-T", grounding_dino_tiny, grounding_dino_call, args, images),
    ]
    results = {"device": device_description(args.device), "image": f"{height}x{width}", "batch": args.batch,
               "precision": "bf16 autocast" if args.bf16 else "fp32", "prompt": "80 COCO class names", "rows": rows,
               "glip_speedup": rows[1]["median_s"] / rows[0]["median_s"]}
    print(f"{'model':18s} {'s/call':>8s} {'img/s':>7s} {'peak GiB':>9s}  ({results['device']}, {results['image']}, "
          f"batch {args.batch}, {results['precision']})")
    for row in rows:
        print(f"{row['model']:18s} {row['median_s']:8.3f} {row['images_per_s']:7.2f} {row['peak_memory_gib']:9.2f}")
    print(f"GLIP-T / Grounding DINO-T speed ratio: {results['glip_speedup']:.2f}x; GLIP-T "
          f"{rows[0]['flops_per_image'] / 1e12:.2f} TFLOP per image, {rows[0]['achieved_tflops']:.3f} TFLOP/s achieved")
    write_results(args.output, results)
    return results


if __name__ == "__main__":
    main()
