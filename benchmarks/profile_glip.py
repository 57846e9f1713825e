"""Where GLIP-T's inference time goes: time per stage (events around each module), and on a GPU the top kernels
(torch.profiler) and the deformable-conv variants on one P3-sized map.

    python benchmarks/profile_glip.py --size 800x1333 --batch 8 [--bf16] [--output-dir DIR]
    python benchmarks/profile_glip.py --device cpu --size 800 --batch 1      # stages only

Prints the tables; with --output-dir also writes them (and the profiler's full table) there.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import torch
from bench_inference import parse_size
from common import COCO_NAMES, add_attention_argument, apply_attention, glip_tiny, test_image_tensor, timed


class HostEvent:
    """The part of torch.cuda.Event that StageTimer uses, for the CPU: a host clock reading."""

    def record(self):
        self.seconds = time.perf_counter()

    def elapsed_time(self, other) -> float:
        return (other.seconds - self.seconds) * 1e3


class StageTimer:
    """Records events (CUDA events on a GPU) before and after each watched module's forward; sums milliseconds per
    stage name."""

    def __init__(self, modules: dict, device: str):
        self.device = device
        self.events = collections.defaultdict(list)
        self.handles = []
        for name, module in modules.items():
            self.handles.append(module.register_forward_pre_hook(self._start(name)))
            self.handles.append(module.register_forward_hook(self._stop(name)))

    def _event(self):
        return torch.cuda.Event(enable_timing=True) if self.device == "cuda" else HostEvent()

    def _start(self, name):
        def hook(module, args):
            event = self._event()
            event.record()
            self.events[name].append([event, None])
        return hook

    def _stop(self, name):
        def hook(module, args, output):
            event = self._event()
            event.record()
            self.events[name][-1][1] = event
        return hook

    def milliseconds(self) -> dict:
        if self.device == "cuda":
            torch.cuda.synchronize()
        return {name: sum(start.elapsed_time(stop) for start, stop in pairs) for name, pairs in self.events.items()}

    def remove(self):
        for handle in self.handles:
            handle.remove()


def watched_modules(model) -> dict:
    modules = {"vision tower + FPN": model.model.vision_backbone, "text tower": model.model.text_backbone,
               "head": model.head}
    for index, layer in enumerate(model.model.layers):
        for part in ("fusion", "text_layer", "dyconv"):
            if getattr(layer, part) is not None:
                modules[f"{part} {index}"] = getattr(layer, part)
    return modules


def stage_table(model, processor, images, autocast) -> dict:
    device = autocast["device_type"]
    timer = StageTimer(watched_modules(model), device)
    inputs = processor(images=images, text=[COCO_NAMES] * len(images), device=device)
    inputs = inputs.to(device)
    with torch.no_grad(), torch.autocast(**autocast):
        outputs = model(**inputs)
    timer.remove()
    stages = collections.defaultdict(float)
    for name, ms in timer.milliseconds().items():
        stages[name.split(" ")[0] if name.split(" ")[-1].isdigit() else name] += ms
    post = timed(lambda: processor.post_process_grounded_object_detection(outputs, inputs, threshold=0.0), 3, 1,
                 device)
    stages["post-processing"] = post["median_s"] * 1e3
    pre = timed(lambda: processor(images=images, text=[COCO_NAMES] * len(images), device=device), 3, 1, device)
    stages["preprocessing"] = pre["median_s"] * 1e3
    return dict(stages)


def deform_variants(batch: int, height: int, width: int) -> dict:
    """Milliseconds of one 256-channel modulated deformable 3x3 conv per implementation, and relative error."""
    from glip_hf.deform_conv_glip import _deform_conv2d_sampled, _torchvision_deform_conv, columns_times_weight
    from glip_hf.deform_im2col_triton import deform_im2col

    def triton_deform_conv(x, offset, mask, weight, bias):
        columns = deform_im2col(x, offset, mask, 1, 1, torch.bfloat16)
        return columns_times_weight(columns, weight, bias, offset.shape[-2:], torch.bfloat16, torch.bfloat16)

    torch.manual_seed(0)
    x = torch.randn(batch, 256, height, width, device="cuda")
    offset = torch.randn(batch, 18, height, width, device="cuda") * 2
    mask = torch.rand(batch, 9, height, width, device="cuda")
    weight = torch.randn(256, 256, 3, 3, device="cuda") * 0.02
    bias = torch.randn(256, device="cuda")
    with torch.no_grad():
        reference = _torchvision_deform_conv(x[:1].double(), offset[:1].double(), mask[:1].double(), weight.double(),
                                             bias.double(), 1)
        variants = {
            "torchvision fp32": lambda: _torchvision_deform_conv(x, offset, mask, weight, bias, 1),
            "grid_sample fp32": lambda: _deform_conv2d_sampled(x, offset, mask, weight, bias),
            "grid_sample fp32 + bf16 matmul": lambda: _deform_conv2d_sampled(x, offset, mask, weight, bias,
                                                                            matmul_dtype=torch.bfloat16),
            "Triton sampling + bf16 matmul": lambda: triton_deform_conv(x, offset, mask, weight, bias),
        }
        rows = {}
        for name, run in variants.items():
            out = run()
            error = ((out[:1].double() - reference).norm() / reference.norm()).item()
            rows[name] = {"ms": timed(run, 10, 3, "cuda")["median_s"] * 1e3, "relative_error": error}
        torch.backends.cuda.matmul.allow_tf32 = True
        rows["torchvision tf32"] = {"ms": timed(variants["torchvision fp32"], 10, 3, "cuda")["median_s"] * 1e3}
        torch.backends.cuda.matmul.allow_tf32 = False
    return rows


def kernel_table(model, processor, images, autocast, row_limit: int = 30) -> str:
    from torch.profiler import ProfilerActivity, profile

    inputs = processor(images=images, text=[COCO_NAMES] * len(images), device="cuda")
    inputs = inputs.to("cuda")
    with torch.no_grad(), torch.autocast(**autocast):
        model(**inputs)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as profiler:
            model(**inputs)
            torch.cuda.synchronize()
    return profiler.key_averages().table(sort_by="cuda_time_total", row_limit=row_limit, max_name_column_width=70)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for the stage times alone")
    parser.add_argument("--size", default="800x1333")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--output-dir", type=Path, default=None)
    add_attention_argument(parser)
    args = parser.parse_args(argv)
    height, width = parse_size(args.size)
    autocast = dict(device_type=args.device, dtype=torch.bfloat16, enabled=args.bf16)
    model, processor = glip_tiny(args.device)
    apply_attention(model, args.attention)
    images = [test_image_tensor(height, width, seed, args.device) for seed in range(args.batch)]
    stage_table(model, processor, images, autocast)  # warm-up
    stages = stage_table(model, processor, images, autocast)
    total = sum(stages.values())
    print(f"GLIP-T stages, batch {args.batch}, {height}x{width}, {'bf16' if args.bf16 else 'fp32'}, "
          f"{args.device}, attention {args.attention}:")
    for name, ms in sorted(stages.items(), key=lambda item: -item[1]):
        print(f"  {name:22s} {ms:9.2f} ms  {100 * ms / total:5.1f}%")
    if args.device != "cuda":
        return
    deform = deform_variants(args.batch, (height + 7) // 8, (width + 7) // 8)
    print("deformable conv on one P3 map (256 channels):")
    for name, row in deform.items():
        print(f"  {name:32s} {row['ms']:8.2f} ms  rel. err {row.get('relative_error', float('nan')):.1e}")
    table = kernel_table(model, processor, images, autocast)
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "profile_kernels.txt").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
