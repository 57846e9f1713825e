"""Inference, end to end (preprocessing of images already in memory, model, post-processing), GLIP-T next to
Grounding DINO-T in the same process, same images, same 80 COCO class names as the prompt.

    python benchmarks/bench_inference.py [--device cpu] [--size 512] [--batch 1] [--bf16] [--compile]

CPU default: 512x512, batch 1, fp32. On a GPU: `--device cuda --size 800x1333 --batch 8 --bf16` for throughput,
`--batch 1` for latency. The images are uint8 (3, H, W) tensors on the device and both processors preprocess them
there (`device=`). Reports seconds per call, images/s, peak memory, GLIP-T's FLOPs per image, and on CUDA the
achieved share of the device's measured bf16 matrix-product rate. `--compile` adds a row for GLIP-T with its
DyHead layers and head under `torch.compile`.
"""

from __future__ import annotations

import argparse
import resource
from pathlib import Path

import torch
from common import (
    COCO_NAMES,
    add_attention_argument,
    apply_attention,
    device_description,
    glip_tiny,
    grounding_dino_tiny,
    measured_bf16_matmul_tflops,
    test_image_tensor,
    timed,
    write_results,
)


# Grounding DINO's processor takes the caption itself; GLIP's builds the same "a. b. c." prompt from the names.
GROUNDING_DINO_PROMPT = ". ".join(COCO_NAMES) + "."


def parse_size(text: str) -> tuple[int, int]:
    height, _, width = text.partition("x")
    return int(height), int(width or height)


def glip_call(model, processor, images, device, bf16):
    def run():
        inputs = processor(images=images, text=[COCO_NAMES] * len(images), device=device)
        inputs = inputs.to(device)
        with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            outputs = model(**inputs)
        return processor.post_process_grounded_object_detection(outputs, inputs, threshold=0.0)
    return run


def grounding_dino_call(model, processor, images, device, bf16):
    text = GROUNDING_DINO_PROMPT
    sizes = [tuple(image.shape[-2:]) for image in images]

    def run():
        inputs = processor(images=images, text=[text] * len(images), return_tensors="pt", device=device).to(device)
        with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            outputs = model(**inputs)
        # Its post-processing decodes a label per kept box in Python: keep about GLIP's 100 detections per image
        # (the 100th best score of each image) so that both return the same amount, as with a trained model.
        best = outputs.logits.float().sigmoid().amax(dim=-1).topk(100, dim=1).values[:, -1].min()
        return processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=float(best) - 1e-6, text_threshold=0.25, target_sizes=sizes)
    return run


def forward_only(model, inputs, device, bf16):
    """The model call alone on prepared inputs (preprocessing and post-processing excluded)."""
    def run():
        with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            return model(**inputs)
    return run


def prepared_inputs(name, processor, images, device):
    if name.startswith("GLIP-T"):
        inputs = processor(images=images, text=[COCO_NAMES] * len(images), device=device)
        return {k: inputs[k].to(device) for k in ("pixel_values", "input_ids", "attention_mask")}
    text = [GROUNDING_DINO_PROMPT] * len(images)
    return dict(processor(images=images, text=text, return_tensors="pt", device=device).to(device))


def count_cpu_attention() -> None:
    """torch's FlopCounterMode knows the CUDA attention kernels only: register the CPU flash kernel's formula."""
    from torch.utils import flop_counter

    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if cpu_attention in flop_counter.flop_registry or cpu_attention.default in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(cpu_attention)
    def attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def glip_flops_per_image(model, processor, image, device) -> float:
    """FLOPs of one fp32 forward, counted by torch's FlopCounterMode. Off CUDA the deformable convs run as
    grid_sample + matmul, whose matmuls are counted; on CUDA torchvision's kernel is invisible to the counter, so
    each call's 2 * Cin * 9 * Cout * Ho * Wo is added from its actual shapes. The fusion counts what its attention
    path computes: SDPA computes the logits once per direction, the folded path (CPU default) 2.6x fewer FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    from glip_hf.deform_conv_glip import ModulatedDeformConv2d

    uncounted = []

    def count_deformable(module, args, output):
        if output.is_cuda and len(args) > 1 and args[1] is not None:
            uncounted.append(2 * module.weight[0].numel() * output.numel())

    hooks = [m.register_forward_hook(count_deformable) for m in model.modules() if isinstance(m, ModulatedDeformConv2d)]
    count_cpu_attention()
    inputs = processor(images=[image], text=[COCO_NAMES], device=device)
    inputs = inputs.to(device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    for hook in hooks:
        hook.remove()
    return float(counter.get_total_flops() + sum(uncounted))


def peak_memory_gib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process high-water mark (Linux: KiB)


def measure(name, build, call, args, images, compile_model=False) -> dict:
    model, processor = build(args.device)
    if name.startswith("GLIP-T"):
        apply_attention(model, args.attention)
        model.config.max_prompts_per_pass = args.prompts_per_pass
        flops = glip_flops_per_image(model, processor, images[0], args.device)
    if compile_model:
        # The DyHead layers and the head: the part that compiles without graph breaks, and most of the time.
        for index, layer in enumerate(model.model.layers):
            model.model.layers[index] = torch.compile(layer, dynamic=False)
        model.head = torch.compile(model.head, dynamic=False)
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    timing = timed(call(model, processor, images, args.device, args.bf16), args.repeats, args.warmup, args.device)
    result = {"model": name, **timing, "images_per_s": len(images) / timing["median_s"],
              "peak_memory_gib": peak_memory_gib(args.device)}
    forward = timed(forward_only(model, prepared_inputs(name, processor, images, args.device), args.device, args.bf16),
                    args.repeats, args.warmup, args.device)
    result["forward_only_s"] = forward["median_s"]
    if name.startswith("GLIP-T"):
        result["flops_per_image"] = flops
        result["achieved_tflops"] = flops * result["images_per_s"] / 1e12
    del model
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="512", help="HxW or S (square) of the test image")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also time GLIP-T under torch.compile")
    add_attention_argument(parser)
    parser.add_argument("--prompts-per-pass", type=int, default=None,
                        help="GLIP-T's config.max_prompts_per_pass (default None: the model's rule, rows making "
                             "512x512 pixels per pass on CPU, all rows on CUDA)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/inference.json"))
    args = parser.parse_args(argv)
    height, width = parse_size(args.size)
    images = [test_image_tensor(height, width, seed, args.device) for seed in range(args.batch)]
    rows = [
        measure("GLIP-T", glip_tiny, glip_call, args, images),
        measure("Grounding DINO-T", grounding_dino_tiny, grounding_dino_call, args, images),
    ]
    if args.compile:
        rows.append(measure("GLIP-T compiled", glip_tiny, glip_call, args, images, compile_model=True))
    peak = measured_bf16_matmul_tflops(args.device)
    results = {"device": device_description(args.device), "image": f"{height}x{width}", "batch": args.batch,
               "precision": "bf16 autocast" if args.bf16 else "fp32", "prompt": "80 COCO class names", "rows": rows,
               "glip_attention": args.attention, "glip_prompts_per_pass": args.prompts_per_pass,
               "glip_speedup": rows[1]["median_s"] / rows[0]["median_s"], "measured_bf16_matmul_tflops": peak,
               "torch": torch.__version__}
    print(f"{'model':18s} {'s/call':>8s} {'img/s':>7s} {'peak GiB':>9s} {'forward s':>10s}  ({results['device']}, "
          f"{results['image']}, batch {args.batch}, {results['precision']})")
    for row in rows:
        print(f"{row['model']:18s} {row['median_s']:8.3f} {row['images_per_s']:7.2f} {row['peak_memory_gib']:9.2f} "
              f"{row['forward_only_s']:10.3f}")
    glip = rows[0]
    share = f", {100 * glip['achieved_tflops'] / peak:.1f}% of the measured {peak:.0f} TFLOP/s bf16 rate" if peak else ""
    print(f"GLIP-T / Grounding DINO-T speed ratio: {results['glip_speedup']:.2f}x; GLIP-T "
          f"{glip['flops_per_image'] / 1e12:.2f} TFLOP per image, {glip['achieved_tflops']:.3f} TFLOP/s achieved"
          f"{share}")
    if args.compile:
        results["compile_speedup"] = rows[0]["median_s"] / rows[2]["median_s"]
        print(f"torch.compile gain on GLIP-T: {results['compile_speedup']:.2f}x")
    write_results(args.output, results)
    return results


if __name__ == "__main__":
    main()
