"""Deployment paths on one device in one run: GLIP-T in PyTorch (fp32, bf16 autocast, fp32 with the prompt encoded
once) and in ONNX Runtime (fp32 as `glip_hf.export_glip` exports it, and `onnx_int8.py`'s int8 copy), against
Grounding DINO-T in PyTorch (fp32, bf16 autocast), on the same image and the 80 COCO class names.

    python benchmarks/bench_deploy.py [--size 512] [--repeats 3] [--skip-onnx] [--onnx-image-size any|fixed]
        [--bf16 auto|always|never]

The image is resized by each model's processor (GLIP: 800x800 for a 512x512 photo). Runs alternate between the paths
(a, b, c, ..., a, b, c, ...), so that load from other processes falls on all of them; each row gives the median and
the spread (min-max) of its runs. Times are end to end: preprocessing, model, post-processing. Reports GLIP-T's
FLOPs per image, achieved TFLOP/s (for int8, the fp32 model's FLOPs over its time), each path's speed relative to
Grounding DINO-T's best, the ONNX files' sizes, and whether this CPU multiplies bf16 in hardware.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from bench_inference import GROUNDING_DINO_PROMPT, glip_flops_per_image, parse_size
from common import (
    COCO_NAMES,
    device_description,
    glip_tiny,
    grounding_dino_tiny,
    test_image_tensor,
    timed_alternately,
    write_results,
)
from onnx_int8 import int8_copy

from glip_hf.export_glip import export_onnx, post_process_exported
from glip_hf.precision_glip import cpu_has_fast_bf16


def glip_pytorch(model, processor, image, bf16: bool, cached_prompt: bool):
    inputs = processor(images=[image], text=[COCO_NAMES], device="cpu")
    text_features = model.encode_prompt(inputs["input_ids"], inputs["attention_mask"]) if cached_prompt else None

    def run():
        batch = processor(images=[image], text=[COCO_NAMES], device="cpu")
        text = {"text_features": text_features} if cached_prompt else {"input_ids": batch["input_ids"]}
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs = model(batch["pixel_values"], attention_mask=batch["attention_mask"], **text)
        return processor.post_process_grounded_object_detection(outputs, batch, threshold=0.0)
    return run


def glip_onnx(path, processor, image, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run():
        batch = processor(images=[image], text=[COCO_NAMES], device="cpu")
        feeds = {name: batch[name].numpy() for name in ("pixel_values", "input_ids", "attention_mask")}
        logits, boxes, centerness = session.run(None, feeds)
        return post_process_exported(logits, boxes, centerness, batch["token_maps"], batch["image_sizes"],
                                     tuple(batch["pixel_values"].shape[-2:]), target_sizes=batch["original_sizes"],
                                     label_ids=batch["label_ids"], image_index=batch["image_index"])
    return run


def grounding_dino(model, processor, image, bf16: bool):
    def run():
        inputs = processor(images=[image], text=[GROUNDING_DINO_PROMPT], return_tensors="pt")
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs = model(**inputs)
        best = outputs.logits.float().sigmoid().amax(dim=-1).topk(100, dim=1).values[:, -1].min()
        return processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=float(best) - 1e-6, text_threshold=0.25,
            target_sizes=[tuple(image.shape[-2:])])
    return run


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="512", help="HxW or S (square) of the test photo")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--skip-onnx", action="store_true", help="leave out the ONNX Runtime rows")
    parser.add_argument("--onnx-image-size", choices=["any", "fixed"], default="any",
                        help="export the ONNX graph for any image size (glip-hf export's default) or for the "
                             "photo's size only (--static-image-size)")
    parser.add_argument("--bf16", choices=["auto", "always", "never"], default="auto",
                        help="bf16 autocast rows: 'auto' runs them only on CPUs that multiply bf16 in hardware "
                             "(elsewhere torch emulates bf16 and a call takes minutes)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/deploy_cpu.json"))
    args = parser.parse_args(argv)
    height, width = parse_size(args.size)
    image = test_image_tensor(height, width, 0, "cpu")
    glip, glip_processor = glip_tiny("cpu")
    dino, dino_processor = grounding_dino_tiny("cpu")
    padded = tuple(glip_processor(images=[image], text=[COCO_NAMES], device="cpu")["pixel_values"].shape[-2:])
    paths = {
        "GLIP-T PyTorch fp32": glip_pytorch(glip, glip_processor, image, bf16=False, cached_prompt=False),
        "GLIP-T PyTorch fp32, prompt encoded once": glip_pytorch(glip, glip_processor, image, False, True),
        "Grounding DINO-T PyTorch fp32": grounding_dino(dino, dino_processor, image, bf16=False),
    }
    if args.bf16 == "always" or (args.bf16 == "auto" and cpu_has_fast_bf16()):
        paths["GLIP-T PyTorch bf16 autocast"] = glip_pytorch(glip, glip_processor, image, True, False)
        paths["Grounding DINO-T PyTorch bf16 autocast"] = grounding_dino(dino, dino_processor, image, bf16=True)
    onnx_bytes = int8_bytes = None
    with tempfile.TemporaryDirectory() as folder:
        if not args.skip_onnx:
            any_size = args.onnx_image_size == "any"
            onnx_path = export_onnx(glip, Path(folder) / "glip_t.onnx", "detector", padded,
                                    dynamic_image_size=any_size)
            onnx_bytes = onnx_path.stat().st_size
            name = f"GLIP-T ONNX Runtime fp32, {'any-size' if any_size else 'fixed-size'} graph"
            paths[name] = glip_onnx(onnx_path, glip_processor, image, torch.get_num_threads())
            int8_path = int8_copy(onnx_path, Path(folder) / "glip_t.int8.onnx")
            int8_bytes = int8_path.stat().st_size
            paths[name.replace("fp32", "int8")] = glip_onnx(int8_path, glip_processor, image, torch.get_num_threads())
        timings = timed_alternately(paths, args.repeats, args.warmup, "cpu")
    flops = glip_flops_per_image(glip, glip_processor, image, "cpu")
    dino_best = min(timing["median_s"] for name, timing in timings.items() if name.startswith("Grounding"))
    rows = []
    for name, timing in timings.items():
        row = {"path": name, **timing, "speed_vs_grounding_dino_best": dino_best / timing["median_s"]}
        if name.startswith("GLIP-T"):
            row["achieved_tflops"] = flops / timing["median_s"] / 1e12
        rows.append(row)
    results = {"device": device_description("cpu"), "photo": f"{height}x{width}",
               "glip_input": f"{padded[0]}x{padded[1]}", "prompt": "80 COCO class names",
               "glip_flops_per_image": flops, "rows": rows, "onnx_file_bytes": onnx_bytes,
               "onnx_int8_file_bytes": int8_bytes, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "cpu_has_fast_bf16": cpu_has_fast_bf16(), "torch": torch.__version__}
    print(f"{results['device']}, {results['cpu_capability']}, fast bf16: {results['cpu_has_fast_bf16']}; GLIP-T "
          f"{flops / 1e12:.2f} TFLOP per image at {results['glip_input']}")
    print(f"{'path':42s} {'median s':>9s} {'min-max s':>13s} {'vs GDINO best':>14s} {'TFLOP/s':>8s}")
    for row in rows:
        spread = f"{min(row['seconds']):.2f}-{max(row['seconds']):.2f}"
        tflops = f"{row['achieved_tflops']:.3f}" if "achieved_tflops" in row else ""
        print(f"{row['path']:42s} {row['median_s']:9.2f} {spread:>13s} {row['speed_vs_grounding_dino_best']:13.2f}x "
              f"{tflops:>8s}")
    if onnx_bytes:
        print(f"ONNX files: fp32 {onnx_bytes / 2**20:.0f} MiB, int8 {int8_bytes / 2**20:.0f} MiB")
    write_results(args.output, results)
    return results


if __name__ == "__main__":
    main()
