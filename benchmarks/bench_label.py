"""Labelling throughput: `glip-hf label` against a naive loop over transformers' zero-shot-object-detection pipeline.

Same model (`--model`: a mid-size or tiny random GLIP, see MODELS), same prompt (10 COCO names), same images
(`--images` photo-like images of three sizes around `--image-size`), same run:

* labeller: `label_corpus` (what `glip-hf label` runs) with batches of `--batch-size`, the class prompt encoded once;
* naive: `pipeline("zero-shot-object-detection")` called once per image with the class names;

runs of the two alternate so that load from other processes falls on both. Then the command line itself, one
process against `--processes` processes (RANK / WORLD_SIZE, as `accelerate launch` sets them), each process given
an equal share of the cores; wall time includes each process's start-up and model loading.

    python benchmarks/bench_label.py [--model mid] [--image-size 256] [--images 48] [--batch-size 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import COCO_NAMES, device_description, test_image, timed_alternately, write_results
from transformers import BertConfig, pipeline

from glip_hf import GlipConfig, GlipForGrounding, GlipImageProcessor, GlipProcessor
from glip_hf.labelling_glip import LabelRun, folder_items, label_corpus
from glip_hf.labelling_policy_glip import LabelPolicy
from glip_hf.processing_glip import load_tokenizer

CLASSES = COCO_NAMES[:10]
SIZES = [(1.0, 1.0), (1.0, 1.25), (1.25, 1.0)]  # (height, width) in units of --image-size


# mid: Swin with a 48-d stem, 2-layer 128-d BERT; tiny: the tests' 16-d Swin and 1-layer 32-d BERT. Both keep the
# bert-base vocabulary, so the prompt is tokenised as for a real model.
MODELS = {
    "mid": dict(embed_dim=48, depths=[2, 2, 2, 2], num_heads=[2, 4, 4, 8], text=(128, 2, 256), channels=64,
                fusion=128, groups=16),
    "tiny": dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], text=(32, 1, 64), channels=32,
                 fusion=64, groups=8),
}


def random_model(folder: Path, size: str, shortest_edge: int):
    torch.manual_seed(0)
    shape = MODELS[size]
    hidden, layers, intermediate = shape["text"]
    config = GlipConfig(
        backbone_config=dict(model_type="swin", embed_dim=shape["embed_dim"], depths=shape["depths"],
                             num_heads=shape["num_heads"], window_size=7,
                             out_features=["stage2", "stage3", "stage4"]),
        text_config=BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                               intermediate_size=intermediate, max_position_embeddings=128),
        fpn_channels=shape["channels"], head_channels=shape["channels"], num_dyhead_layers=2,
        fusion_embed_dim=shape["fusion"], fusion_num_heads=4, group_norm_num_groups=shape["groups"], max_text_len=64,
    )
    model = GlipForGrounding(config).eval()
    size_rule = {"shortest_edge": shortest_edge, "longest_edge": shortest_edge * 5 // 4}
    processor = GlipProcessor(GlipImageProcessor(size=size_rule), load_tokenizer(), max_text_len=64)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return GlipForGrounding.from_pretrained(folder).eval(), GlipProcessor.from_pretrained(folder)


def write_images(folder: Path, count: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        height, width = (round(size * factor) for factor in SIZES[index % len(SIZES)])
        test_image(height, width, seed=index).save(folder / f"{index:04d}.png")


def command_line_seconds(model_dir: Path, images: Path, output: Path, processes: int, batch_size: int) -> float:
    threads = max(1, (os.cpu_count() or 1) // processes)
    command = [sys.executable, "-m", "glip_hf.cli", "label", "--model", str(model_dir), "--images", str(images),
               "--classes", ". ".join(CLASSES), "--output", str(output), "--batch-size", str(batch_size),
               "--shard-size", str(batch_size * 2)]
    start = time.perf_counter()
    workers = [subprocess.Popen(command, env=dict(os.environ, RANK=str(rank), WORLD_SIZE=str(processes),
                                                  OMP_NUM_THREADS=str(threads)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for rank in range(processes)]
    for worker in workers:
        _, stderr = worker.communicate()
        if worker.returncode != 0:
            raise RuntimeError(stderr[-3000:])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--model", default="mid", choices=sorted(MODELS), help="random model size (default mid)")
    parser.add_argument("--image-size", type=int, default=256, help="shortest edge of the images (default 256)")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "label_cpu.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_label_"))
    model, processor = random_model(work / "model", args.model, args.image_size)
    write_images(work / "images", args.images, args.image_size)
    paths = sorted((work / "images").iterdir())
    detector = pipeline("zero-shot-object-detection", model=str(work / "model"))
    runs = iter(range(10**6))

    def labeller():
        run = LabelRun(model=model, processor=processor, output=work / f"labels-{next(runs)}", classes=CLASSES,
                       policy=LabelPolicy(), batch_size=args.batch_size, shard_size=args.images, progress=False)
        label_corpus(run, folder_items(work / "images"), "bench", rank=0, world_size=1)

    def naive():
        for path in paths:
            detector(str(path), candidate_labels=CLASSES, threshold=0.5)

    with torch.no_grad():
        timings = timed_alternately({"labeller": labeller, "naive_pipeline_loop": naive}, args.repeats, 1, "cpu")
    rates = {name: args.images / timing["median_s"] for name, timing in timings.items()}
    one = command_line_seconds(work / "model", work / "images", work / "cli-1", 1, args.batch_size)
    several = command_line_seconds(work / "model", work / "images", work / f"cli-{args.processes}", args.processes,
                                   args.batch_size)
    same = (work / "cli-1" / "labels.odvg.jsonl").read_text() == (
        work / f"cli-{args.processes}" / "labels.odvg.jsonl").read_text()
    results = {
        "device": device_description("cpu"), "torch": torch.__version__, "model": args.model,
        "images": args.images, "image_size": args.image_size, "classes": CLASSES, "batch_size": args.batch_size, "timings": timings,
        "images_per_second": rates, "speedup": rates["labeller"] / rates["naive_pipeline_loop"],
        "command_line": {"1_process_s": one, f"{args.processes}_processes_s": several,
                         "images_per_second_1": args.images / one,
                         f"images_per_second_{args.processes}": args.images / several,
                         "same_labels": same},
    }
    print({k: results[k] for k in ("images_per_second", "speedup", "command_line")})
    write_results(args.output, results)


if __name__ == "__main__":
    main()
