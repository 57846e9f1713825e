"""Long vocabularies: 1,203 class names (LVIS's count) on one image, GLIP-T.

Chunked path (ours): one processor call splits the names into prompts of at most `--chunk-names` names, the vision
tower runs once and the chunks go through the fusion head as one batch, or in groups of `--prompts-per-pass`.
Baseline (the original's LVIS evaluation): the full model runs once per chunk of the same size.
Runs of the two alternate, so that a slow spell of a noisy machine falls on both.

    python benchmarks/bench_long_vocab.py [--device cpu] [--size 512] [--chunk-names 40]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
from common import (
    add_attention_argument,
    apply_attention,
    device_description,
    glip_tiny,
    test_image_tensor,
    timed_alternately,
    write_results,
)

ADJECTIVES = ["red", "blue", "green", "small", "large", "old", "new", "wooden", "metal", "plastic", "striped",
              "round", "square", "tall", "short", "bright", "dark", "heavy", "light", "soft", "hard", "wet", "dry",
              "hot", "cold", "empty", "full", "open", "closed", "broken", "clean", "dirty", "young", "white",
              "black", "yellow", "purple", "orange", "silver", "golden"]
NOUNS = ["cup", "chair", "table", "lamp", "door", "window", "bottle", "bag", "shoe", "hat", "coat", "box", "ball",
         "car", "truck", "boat", "bird", "dog", "cat", "horse", "tree", "flower", "book", "phone", "clock", "bench",
         "fence", "sign", "kite", "bowl", "spoon"]
NAMES = [f"{a} {n}" for a, n in itertools.product(ADJECTIVES, NOUNS)][:1203]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--chunk-names", type=int, default=40, help="names per prompt (the original used 40)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prompts-per-pass", type=int, default=None,
                        help="config.max_prompts_per_pass for the chunked path (default None: the model's rule, "
                             "one chunk at a time on CPU at this size, all at once on CUDA)")
    add_attention_argument(parser)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/long_vocab.json"))
    args = parser.parse_args(argv)
    model, processor = glip_tiny(args.device)
    apply_attention(model, args.attention)
    model.config.max_prompts_per_pass = args.prompts_per_pass
    image = test_image_tensor(args.size, args.size, 0, args.device)
    chunks = [NAMES[i:i + args.chunk_names] for i in range(0, len(NAMES), args.chunk_names)]
    autocast = dict(device_type=args.device, dtype=torch.bfloat16, enabled=args.bf16)

    def ours():
        rows = [processor(text=chunk) for chunk in chunks]
        length = max(r["input_ids"].shape[1] for r in rows)
        pixel = processor.image_processor(image, device=args.device)
        input_ids = torch.zeros(len(rows), length, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for index, row in enumerate(rows):
            input_ids[index, : row["input_ids"].shape[1]] = row["input_ids"][0]
            attention[index, : row["input_ids"].shape[1]] = 1
        with torch.no_grad(), torch.autocast(**autocast):
            return model(pixel["pixel_values"].to(args.device), input_ids.to(args.device), attention.to(args.device),
                         image_index=torch.zeros(len(rows), dtype=torch.long, device=args.device))

    def baseline():
        for chunk in chunks:
            inputs = processor(images=image, text=chunk, device=args.device).to(args.device)
            with torch.no_grad(), torch.autocast(**autocast):
                model(**inputs)

    timings = timed_alternately({"ours": ours, "baseline": baseline}, args.repeats, args.warmup, args.device)
    timing_ours, timing_baseline = timings["ours"], timings["baseline"]
    results = {"device": device_description(args.device), "image": args.size, "names": len(NAMES),
               "chunks": len(chunks), "chunk_names": args.chunk_names,
               "prompts_per_pass": args.prompts_per_pass, "attention": args.attention,
               "precision": "bf16 autocast" if args.bf16 else "fp32",
               "chunked_vision_once_s": timing_ours,
               "full_model_per_chunk_s": timing_baseline,
               "speedup": timing_baseline["median_s"] / timing_ours["median_s"]}
    print(f"{len(NAMES)} names in {len(chunks)} chunks of {args.chunk_names} ({results['device']}, {args.size} px): "
          f"vision once + batched chunks {timing_ours['median_s']:.2f} s, full model per chunk "
          f"{timing_baseline['median_s']:.2f} s -> {results['speedup']:.2f}x")
    write_results(args.output, results)
    return results


if __name__ == "__main__":
    main()
