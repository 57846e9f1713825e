"""Fine-tune GLIP on COCO-format detection data (or MDETR / ODVG grounding data) with transformers' Trainer.

    python examples/finetune.py --model_name_or_path glip-t --train_annotations train.json --train_images images/ \
        --eval_annotations val.json --eval_images images/ --output_dir runs/glip-t-ft --transfer_mode full \
        --learning_rate 1e-4 --text_learning_rate 1e-5 --num_train_epochs 12 --per_device_train_batch_size 4

Runs on CPU, one GPU, or several processes with `accelerate launch --multi_gpu --num_processes N` / torchrun
(without a GPU the processes train on CPU over gloo). Transfer modes are the GLIP paper's: `full`,
`prompt` (prompt tuning: only learnt prompt embeddings train) and `linear_probe` (only the head's scoring layers).
Evaluation reports COCO AP with pycocotools; the final model and processor are saved with `save_pretrained`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets.exceptions import DatasetGenerationError
from transformers import HfArgumentParser, TrainingArguments, set_seed

from glip_hf import GlipForGrounding, GlipProcessor
from glip_hf.data_glip import (
    GlipDataCollator,
    GlipTrainTransform,
    build_grounding_dataset,
    coco_detection_examples,
    mdetr_examples,
    odvg_examples,
)
from glip_hf.evaluation_glip import load_coco
from glip_hf.training_glip import (
    TRANSFER_MODES,
    GlipTrainer,
    make_coco_compute_metrics,
    set_transfer_mode,
)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "folder of a GLIP model and processor (save_pretrained)"})
    transfer_mode: str = field(default="full", metadata={"help": f"one of {TRANSFER_MODES}"})
    text_learning_rate: float | None = field(default=None, metadata={"help": "learning rate of the text tower"})
    ema_decay: float | None = field(default=None, metadata={"help": "keep an EMA of the weights (e.g. 0.999)"})


@dataclass
class DataArguments:
    train_annotations: str = field(metadata={"help": "COCO detection JSON, MDETR JSON or ODVG jsonl"})
    train_images: str = field(metadata={"help": "folder of the training images"})
    eval_annotations: str | None = field(default=None, metadata={"help": "COCO detection JSON to report AP on"})
    eval_images: str | None = field(default=None)
    data_format: str = field(default="coco", metadata={"help": "coco, mdetr or odvg"})
    min_sizes: list[int] = field(default_factory=lambda: [480, 560, 640, 720, 800],
                                 metadata={"help": "random shortest edges of the training resize"})
    max_size: int = field(default=1333, metadata={"help": "longest edge of the training resize"})
    flip_prob: float = field(default=0.5)
    num_negatives: int = field(default=85, metadata={"help": "negative class names sampled into detection prompts"})
    metrics_file: str = field(default="metrics.json", metadata={"help": "written into output_dir"})


def training_dataset(data: DataArguments, processor, seed: int):
    if data.data_format == "coco":
        return build_grounding_dataset(
            coco_detection_examples, annotation_file=data.train_annotations, image_dir=data.train_images,
            tokenizer=processor.tokenizer, max_text_len=processor.max_text_len, num_negatives=data.num_negatives,
            seed=seed,
        )
    if data.data_format == "mdetr":
        return build_grounding_dataset(mdetr_examples, annotation_file=data.train_annotations,
                                       image_dir=data.train_images)
    if data.data_format == "odvg":
        return build_grounding_dataset(
            odvg_examples, jsonl_file=data.train_annotations, image_dir=data.train_images,
            tokenizer=processor.tokenizer, max_text_len=processor.max_text_len, num_negatives=data.num_negatives,
            seed=seed,
        )
    raise ValueError(f"--data_format must be coco, mdetr or odvg, got {data.data_format!r}")


def evaluation_setup(data: DataArguments, processor):
    """Eval dataset, its collator (one prompt with every class, in category-id order) and compute_metrics."""
    coco = load_coco(data.eval_annotations)
    categories = sorted(coco.loadCats(coco.getCatIds()), key=lambda category: category["id"])
    dataset = build_grounding_dataset(
        coco_detection_examples, annotation_file=data.eval_annotations, image_dir=data.eval_images,
        fixed_prompt=True, tokenizer=processor.tokenizer, max_text_len=10**6,
    )
    collator = GlipDataCollator(processor, train=False, class_names=[category["name"] for category in categories])
    label_to_category = {index: category["id"] for index, category in enumerate(categories)}
    return dataset, collator, make_coco_compute_metrics(coco, label_to_category)


def check_inputs(model_args: ModelArguments, data: DataArguments) -> None:
    """Exit with one "error: ..." line for a missing file or folder, before any model is loaded."""
    paths = [("--model_name_or_path", model_args.model_name_or_path, "dir"),
             ("--train_annotations", data.train_annotations, "file"), ("--train_images", data.train_images, "dir")]
    if data.eval_annotations or data.eval_images:
        if not (data.eval_annotations and data.eval_images):
            raise SystemExit("error: --eval_annotations and --eval_images go together")
        paths += [("--eval_annotations", data.eval_annotations, "file"), ("--eval_images", data.eval_images, "dir")]
    for option, value, kind in paths:
        exists = Path(value).is_dir() if kind == "dir" else Path(value).is_file()
        if not exists:
            raise SystemExit(f"error: {option} {value} is not an existing {'folder' if kind == 'dir' else 'file'}")
    if data.data_format not in ("coco", "mdetr", "odvg"):
        raise SystemExit(f"error: --data_format must be coco, mdetr or odvg, got {data.data_format!r}")
    if not 0.0 <= data.flip_prob <= 1.0 or not data.min_sizes or min(data.min_sizes) < 1 or data.max_size < 1:
        raise SystemExit("error: --flip_prob must be in [0, 1] and --min_sizes / --max_size positive")


def build_or_explain(build, *args):
    """The dataset, or one "error: ..." line when the data cannot be converted (no usable box, bad sizes...)."""
    try:
        return build(*args)
    except (ValueError, TypeError, DatasetGenerationError) as error:
        cause = error.__cause__ if isinstance(error, DatasetGenerationError) and error.__cause__ else error
        raise SystemExit(f"error: {cause}") from None


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not torch.cuda.is_available() and "--use_cpu" not in argv:
        # Without an accelerator, processes started by `accelerate launch` / torchrun must form a CPU (gloo) group.
        argv += ["--use_cpu", "true"]
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    check_inputs(model_args, data_args)
    training_args.remove_unused_columns = False  # the collators read image, caption, boxes and spans
    set_seed(training_args.seed)

    model = GlipForGrounding.from_pretrained(model_args.model_name_or_path)
    processor = GlipProcessor.from_pretrained(model_args.model_name_or_path)
    set_transfer_mode(model, model_args.transfer_mode)

    train_dataset = build_or_explain(training_dataset, data_args, processor, training_args.seed)
    transform = GlipTrainTransform(data_args.min_sizes, data_args.max_size, data_args.flip_prob)
    train_collator = GlipDataCollator(processor, transform=transform, train=True)
    eval_dataset, eval_collator, compute_metrics = None, None, None
    if data_args.eval_annotations:
        eval_dataset, eval_collator, compute_metrics = build_or_explain(evaluation_setup, data_args, processor)

    trainer = GlipTrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        data_collator=train_collator, eval_data_collator=eval_collator, processing_class=processor,
        compute_metrics=compute_metrics, text_learning_rate=model_args.text_learning_rate,
        ema_decay=model_args.ema_decay,
    )
    metrics = {}
    if eval_dataset is not None and training_args.do_eval:
        metrics["before"] = trainer.evaluate()
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics["train"] = train_result.metrics
    if eval_dataset is not None:
        metrics["after"] = trainer.evaluate()
    metrics["log_history"] = trainer.state.log_history
    metrics["world_size"] = training_args.world_size
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)
        path = Path(training_args.output_dir) / data_args.metrics_file
        path.write_text(json.dumps(metrics, indent=2, default=float))
        print(f"metrics written to {path}")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
