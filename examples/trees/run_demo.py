"""The main job, end to end and offline: fine-tune GLIP to find trees in real aerial photos, and show it works.

1. builds the DeepForest tree tiles (train / held-out regions that never overlap) as COCO JSON;
2. builds an untrained GLIP from real pretrained towers (MiniLM-L6 text, MobileNetV2 vision) shipped in wheels;
3. fine-tunes it with `examples/finetune.py` (transformers' Trainer) on the prompt "tree", evaluating COCO AP on
   the held-out tiles before, during and after training;
4. saves it with `save_pretrained`, reloads it through `AutoModelForZeroShotObjectDetection` and the
   `zero-shot-object-detection` pipeline, runs `glip-hf detect` on a held-out photo;
5. writes `metrics.json`, `curves.png` (loss and AP) and `heldout_prediction.png` (predicted and true boxes).

    python examples/trees/run_demo.py --output-dir outputs/demo [--device cuda] [--small]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import finetune  # noqa: E402
from build_dataset import build_tree_dataset  # noqa: E402
from make_model import build_model  # noqa: E402
from report import write_report  # noqa: E402

# CPU: the 400 px tiles at their own size; GPU: full resolution (tiles upscaled to 800 px) and a longer schedule.
SETTINGS = {
    "cpu": dict(image_size=400, min_sizes=[352, 400, 448], max_steps=200, eval_steps=40, batch_size=4, lr=3e-4),
    "cuda": dict(image_size=800, min_sizes=[704, 800, 896], max_steps=600, eval_steps=100, batch_size=8, lr=3e-4),
    "small": dict(image_size=256, min_sizes=[256], max_steps=40, eval_steps=20, batch_size=2, lr=3e-4),
}


def machine_description(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def finetune_arguments(model_dir, data_dir, run_dir, settings, device) -> list[str]:
    arguments = [
        "--model_name_or_path", str(model_dir), "--train_annotations", str(data_dir / "train.json"),
        "--train_images", str(data_dir / "images"), "--eval_annotations", str(data_dir / "heldout.json"),
        "--eval_images", str(data_dir / "images"), "--output_dir", str(run_dir), "--do_eval",
        "--eval_strategy", "steps", "--eval_steps", str(settings["eval_steps"]), "--logging_steps", "5",
        "--max_steps", str(settings["max_steps"]), "--per_device_train_batch_size", str(settings["batch_size"]),
        "--per_device_eval_batch_size", str(settings["batch_size"]), "--learning_rate", str(settings["lr"]),
        "--text_learning_rate", str(settings["lr"] / 10), "--warmup_steps", "10", "--lr_scheduler_type", "cosine",
        "--weight_decay", "1e-4", "--max_grad_norm", "1.0", "--num_negatives", "0", "--flip_prob", "0.5",
        "--min_sizes", *map(str, settings["min_sizes"]), "--max_size", str(max(settings["min_sizes"])),
        "--save_strategy", "no", "--report_to", "none", "--seed", "0", "--dataloader_num_workers", "0",
    ]
    if device == "cuda":
        arguments += ["--bf16", "true"]
    return arguments


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--small", action="store_true", help="CI-sized: small tiles, few steps")
    parser.add_argument("--max-steps", type=int, help="override the number of training steps")
    args = parser.parse_args(argv)
    settings = dict(SETTINGS["small" if args.small else args.device])
    if args.max_steps:
        settings["max_steps"] = args.max_steps
    output = args.output_dir
    start = time.time()

    data_dir = output / "data"
    dataset_stats = build_tree_dataset(data_dir, small=args.small)
    model_dir = output / "init"
    model, processor = build_model(settings["image_size"])
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    del model

    run_dir = output / "model"
    metrics = finetune.main(finetune_arguments(model_dir, data_dir, run_dir, settings, args.device))
    training_seconds = time.time() - start

    summary = write_report(run_dir, data_dir, output, metrics, device=args.device)
    summary.update({
        "machine": machine_description(args.device), "device": args.device, "settings": settings,
        "dataset": {split: {k: v for k, v in info.items() if k != "sources"}
                    for split, info in dataset_stats["splits"].items()},
        "seconds_until_trained": round(training_seconds, 1), "seconds_total": round(time.time() - start, 1),
    })
    (output / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    print(json.dumps({k: summary[k] for k in ("before", "after", "seconds_total", "machine")}, indent=2))
    return summary


if __name__ == "__main__":
    main()
