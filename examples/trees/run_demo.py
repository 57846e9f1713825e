"""The main job, end to end and offline: fine-tune GLIP to find trees in real aerial photos, then self-train.

1. builds the DeepForest tree tiles (train / held-out regions that never overlap) as COCO JSON;
2. builds an untrained GLIP from real pretrained towers (MiniLM-L6 text, MobileNetV2 vision) shipped in wheels;
3. hides the labels of every other training tile; fine-tunes the teacher (`glip_hf.finetuning_glip.run_finetune`,
   transformers' Trainer) on the visible tiles with the prompt "tree", evaluating COCO AP on the held-out tiles;
4. lets the teacher label the hidden tiles with `glip-hf label`, and fine-tunes a student from the same initial model,
   for the same steps, on the true labels plus the pseudo-labels (the GLIP paper's self-training, in small);
5. saves the student with `save_pretrained`, reloads it through `AutoModelForZeroShotObjectDetection` and the
   `zero-shot-object-detection` pipeline, runs `glip-hf detect` on a held-out photo;
6. writes `metrics.json` (teacher and student held-out AP side by side), `curves.png` (the student's loss and AP),
   `self_training.png` (teacher against student) and `heldout_prediction.png` (the student's boxes and the truth).

    python examples/trees/run_demo.py --output-dir outputs/demo [--device cuda] [--small]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from build_dataset import build_tree_dataset
from make_model import build_model
from report import plot_self_training, write_report
from self_training import hold_back_labels, label_with_teacher, student_training_file
from transformers import TrainingArguments

from glip_hf.finetuning_glip import DataArguments, ModelArguments, run_finetune

# CPU: the 400 px tiles at their own size; GPU: full resolution (tiles upscaled to 800 px) and a longer schedule.
# `max_steps` is per model (teacher, then student). `pseudo_threshold`: the teacher's boxes above it become labels.
SETTINGS = {
    "cpu": dict(image_size=400, min_sizes=[352, 400, 448], max_steps=150, eval_steps=50, batch_size=2, lr=3e-4,
                pseudo_threshold=0.3),
    "cuda": dict(image_size=800, min_sizes=[704, 800, 896], max_steps=600, eval_steps=100, batch_size=8, lr=3e-4,
                 pseudo_threshold=0.3),
    "small": dict(image_size=256, min_sizes=[256], max_steps=40, eval_steps=20, batch_size=2, lr=3e-4,
                  pseudo_threshold=0.3),
}
AP_KEYS = ("AP", "AP50", "AP75")


def machine_description(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def finetune(model_dir, train_file, data_format, data_dir, run_dir, settings, device, evaluate_before=True) -> dict:
    """One fine-tuning run of the demo's schedule, evaluated on the held-out tiles (before training too, unless
    `evaluate_before` is False: the teacher's run already evaluated the same initial model)."""
    model_args = ModelArguments(model_name_or_path=str(model_dir), text_learning_rate=settings["lr"] / 10)
    data_args = DataArguments(
        train_annotations=str(train_file), train_images=str(data_dir / "images"), data_format=data_format,
        eval_annotations=str(data_dir / "heldout.json"), eval_images=str(data_dir / "images"),
        min_sizes=list(settings["min_sizes"]), max_size=max(settings["min_sizes"]), flip_prob=0.5, num_negatives=0,
    )
    training_args = TrainingArguments(
        output_dir=str(run_dir), do_eval=evaluate_before, eval_strategy="steps", eval_steps=settings["eval_steps"],
        logging_steps=5, max_steps=settings["max_steps"], per_device_train_batch_size=settings["batch_size"],
        per_device_eval_batch_size=settings["batch_size"], learning_rate=settings["lr"], warmup_steps=10,
        lr_scheduler_type="cosine", weight_decay=1e-4, max_grad_norm=1.0, save_strategy="no", report_to="none",
        seed=0, dataloader_num_workers=0, use_cpu=device != "cuda", bf16=device == "cuda",
    )
    return run_finetune(model_args, data_args, training_args)


def held_out(metrics: dict, stage: str) -> dict:
    return {key: metrics[stage][f"eval_{key}"] for key in AP_KEYS}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--small", action="store_true", help="CI-sized: small tiles, few steps")
    parser.add_argument("--max-steps", type=int, help="override the training steps of each model")
    args = parser.parse_args(argv)
    settings = dict(SETTINGS["small" if args.small else args.device])
    if args.max_steps:
        settings["max_steps"] = args.max_steps
    output = args.output_dir
    start = time.time()

    data_dir = output / "data"
    dataset_stats = build_tree_dataset(data_dir, small=args.small)
    split = hold_back_labels(data_dir)
    model_dir = output / "init"
    model, processor = build_model(settings["image_size"])
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    del model

    teacher_dir, labels_dir, run_dir = output / "teacher", output / "pseudo_labels", output / "model"
    teacher = finetune(model_dir, data_dir / "visible.json", "coco", data_dir, teacher_dir, settings, args.device)
    labelling_start = time.time()
    labelling = label_with_teacher(teacher_dir, data_dir / "heldback_images", labels_dir,
                                   settings["pseudo_threshold"], args.device)
    labelling_seconds = time.time() - labelling_start
    student_file = data_dir / "student_train.odvg.jsonl"
    student_training_file(data_dir, labels_dir / "labels.odvg.jsonl", data_dir / "heldback_images", student_file)
    student = finetune(model_dir, student_file, "odvg", data_dir, run_dir, settings, args.device, False)
    student["before"] = teacher["before"]
    training_seconds = time.time() - start

    summary = write_report(run_dir, data_dir, output, student, device=args.device)
    plot_self_training(teacher, student, output / "self_training.png")
    summary.update({
        "teacher": held_out(teacher, "after"), "student": held_out(student, "after"),
        "self_training": dict(split, pseudo_threshold=settings["pseudo_threshold"],
                              pseudo_labelled_tiles=labelling["images_labelled"], pseudo_boxes=labelling["boxes"],
                              labelling_seconds=round(labelling_seconds, 1)),
        "machine": machine_description(args.device), "device": args.device, "settings": settings,
        "dataset": {split_name: {k: v for k, v in info.items() if k != "sources"}
                    for split_name, info in dataset_stats["splits"].items()},
        "seconds_until_trained": round(training_seconds, 1), "seconds_total": round(time.time() - start, 1),
    })
    summary["files"]["self_training"] = "self_training.png"
    (output / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    print(json.dumps({k: summary[k] for k in ("before", "teacher", "student", "seconds_total", "machine")}, indent=2))
    return summary


if __name__ == "__main__":
    main()
