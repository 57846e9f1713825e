"""Training step (forward + backward + AdamW step) of GLIP-T next to Grounding DINO-T, random weights, same images.

    python benchmarks/bench_training.py --device cuda --size 800x1333 --batch 4 --bf16 [--checkpointing]

Reports images/s and peak memory. Targets a GPU; on CPU use a small size (e.g. --size 256 --batch 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from bench_inference import parse_size, peak_memory_gib
from common import (
    COCO_NAMES,
    add_attention_argument,
    apply_attention,
    device_description,
    glip_tiny,
    grounding_dino_tiny,
    test_image,
    timed,
    write_results,
)


def training_step(model, batch, labels, device, bf16):
    """One forward + backward + AdamW step on a fixed batch, as a closure for `timed`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def glip_batch(processor, images, device):
    """GLIP-T's training inputs (10 COCO names as the prompt) and labels (one box per image)."""
    inputs = processor(images=images, text=[COCO_NAMES[:10]] * len(images))
    height, width = inputs["pixel_values"].shape[-2:]
    labels = [{"boxes": torch.tensor([[0.1 * width, 0.1 * height, 0.5 * width, 0.6 * height]], device=device),
               "token_map": inputs["token_maps"][i][:1].to(device)} for i in range(len(images))]
    batch = {k: inputs[k].to(device) for k in ("pixel_values", "input_ids", "attention_mask")}
    return batch, labels


def glip_step(model, processor, images, device, bf16):
    batch, labels = glip_batch(processor, images, device)
    return training_step(model, batch, labels, device, bf16)


def grounding_dino_step(model, processor, images, device, bf16):
    text = ". ".join(COCO_NAMES[:10]) + "."
    batch = processor(images=images, text=[text] * len(images), return_tensors="pt").to(device)
    labels = [{"class_labels": torch.tensor([0], device=device),
               "boxes": torch.tensor([[0.3, 0.35, 0.4, 0.5]], device=device)} for _ in images]
    return training_step(model, batch, labels, device, bf16)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="800x1333")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing on both models")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--glip-only", action="store_true")
    add_attention_argument(parser)
    parser.add_argument("--output", type=Path, default=Path("results/training.json"))
    args = parser.parse_args(argv)
    height, width = parse_size(args.size)
    images = [test_image(height, width, seed) for seed in range(args.batch)]
    rows = []
    models = (("GLIP-T", glip_tiny, glip_step), ("Grounding DINO-T", grounding_dino_tiny, grounding_dino_step))
    for name, build, make_step in models[: 1 if args.glip_only else 2]:
        model, processor = build(args.device)
        model.train()
        if name == "GLIP-T":
            apply_attention(model, args.attention)
        checkpointing = False
        if args.checkpointing:
            try:
                model.gradient_checkpointing_enable()
                checkpointing = True
            except ValueError as error:  # Grounding DINO in transformers has no checkpointing
                print(f"{name}: {error} Measured without.")
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        timing = timed(make_step(model, processor, images, args.device, args.bf16), args.repeats, 1, args.device)
        rows.append({"model": name, "checkpointing": checkpointing, **timing,
                     "images_per_s": args.batch / timing["median_s"],
                     "peak_memory_gib": peak_memory_gib(args.device)})
        del model
    results = {"device": device_description(args.device), "image": f"{height}x{width}", "batch": args.batch,
               "bf16": args.bf16, "checkpointing": args.checkpointing, "glip_attention": args.attention,
               "rows": rows}
    for row in rows:
        print(f"{row['model']:18s} {row['images_per_s']:7.2f} img/s {row['peak_memory_gib']:7.2f} GiB "
              f"checkpointing {'on' if row['checkpointing'] else 'off'}")
    write_results(args.output, results)
    return results


if __name__ == "__main__":
    main()
