"""Fine-tuning GLIP with transformers' Trainer, as a function: `run_finetune(model_args, data_args, training_args)`.

`examples/finetune.py` is its command line (the same dataclasses, parsed by `HfArgumentParser`). Data are COCO-format
detection JSON, MDETR grounding JSON or ODVG jsonl (`data_format`); evaluation reports COCO AP, LVIS AP or LVIS Fixed
AP (`eval_metric`), with an ODinW dataset's prompt if asked (`odinw_dataset`); the final model and processor are saved
with `save_pretrained` and the metrics written to `output_dir/metrics_file`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from datasets.exceptions import DatasetGenerationError
from transformers import TrainingArguments, set_seed

from .data_glip import (
    GlipDataCollator,
    GlipTrainTransform,
    build_grounding_dataset,
    coco_detection_examples,
    mdetr_examples,
    odvg_examples,
)
from .evaluation.odinw import detection_prompt, find_odinw_dataset
from .evaluation_glip import load_coco
from .modeling_glip import GlipForGrounding
from .processing_glip import GlipProcessor
from .training_glip import (
    TRANSFER_MODES,
    GlipTrainer,
    make_detection_compute_metrics,
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
    eval_metric: str = field(default="auto", metadata={
        "help": "coco, lvis or lvis-fixed (glip_detection evaluate module); auto: lvis-fixed for LVIS annotations"})
    odinw_dataset: str | None = field(default=None, metadata={
        "help": "evaluate with this ODinW dataset's prompt (its config's category names and caption prompt), "
                "e.g. odinw_35/pothole"})


class FinetuneInputError(ValueError):
    """A missing file, a bad setting or data with nothing usable; raised before any training step."""


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
    """Eval dataset, its collator (one prompt with every class, in category-id order, or the ODinW dataset's
    prompt) and compute_metrics (COCO, LVIS or LVIS Fixed AP as the annotations or `eval_metric` ask)."""
    coco = load_coco(data.eval_annotations)
    categories = sorted(coco.loadCats(coco.getCatIds()), key=lambda category: category["id"])
    dataset = build_grounding_dataset(
        coco_detection_examples, annotation_file=data.eval_annotations, image_dir=data.eval_images,
        fixed_prompt=True, tokenizer=processor.tokenizer, max_text_len=10**6,
    )
    text, phrases, ids = [category["name"] for category in categories], None, [c["id"] for c in categories]
    if data.odinw_dataset:
        text, phrases, ids = detection_prompt(find_odinw_dataset(data.odinw_dataset), coco.dataset,
                                              processor.separator)
    collator = GlipDataCollator(processor, train=False, class_names=text, phrases=phrases)
    metric = data.eval_metric
    if metric == "auto":
        metric = "lvis-fixed" if "neg_category_ids" in (coco.dataset["images"] or [{}])[0] else "coco"
    return dataset, collator, make_detection_compute_metrics(coco.dataset, dict(enumerate(ids)), metric)


def check_inputs(model_args: ModelArguments, data: DataArguments) -> None:
    """Raise `FinetuneInputError` for a missing file or folder or a bad setting, before any model is loaded."""
    paths = [("--model_name_or_path", model_args.model_name_or_path, "dir"),
             ("--train_annotations", data.train_annotations, "file"), ("--train_images", data.train_images, "dir")]
    if data.eval_annotations or data.eval_images:
        if not (data.eval_annotations and data.eval_images):
            raise FinetuneInputError("--eval_annotations and --eval_images go together")
        paths += [("--eval_annotations", data.eval_annotations, "file"), ("--eval_images", data.eval_images, "dir")]
    for option, value, kind in paths:
        exists = Path(value).is_dir() if kind == "dir" else Path(value).is_file()
        if not exists:
            raise FinetuneInputError(f"{option} {value} is not an existing {'folder' if kind == 'dir' else 'file'}")
    if data.data_format not in ("coco", "mdetr", "odvg"):
        raise FinetuneInputError(f"--data_format must be coco, mdetr or odvg, got {data.data_format!r}")
    if not 0.0 <= data.flip_prob <= 1.0 or not data.min_sizes or min(data.min_sizes) < 1 or data.max_size < 1:
        raise FinetuneInputError("--flip_prob must be in [0, 1] and --min_sizes / --max_size positive")


def _build_or_explain(build, *args):
    """The dataset, or `FinetuneInputError` when the data cannot be converted (no usable box, bad sizes...)."""
    try:
        return build(*args)
    except (ValueError, DatasetGenerationError) as error:
        cause = error.__cause__ if isinstance(error, DatasetGenerationError) and error.__cause__ else error
        raise FinetuneInputError(str(cause)) from None


def run_finetune(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> dict:
    """Train (and evaluate before and after, with eval annotations), save, and return the metrics: `before`,
    `train`, `after`, `log_history`, `world_size`. Without a GPU give `TrainingArguments(use_cpu=True)`."""
    check_inputs(model_args, data_args)
    training_args.remove_unused_columns = False  # the collators read image, caption, boxes and spans
    set_seed(training_args.seed)

    model = GlipForGrounding.from_pretrained(model_args.model_name_or_path)
    processor = GlipProcessor.from_pretrained(model_args.model_name_or_path)
    set_transfer_mode(model, model_args.transfer_mode)

    train_dataset = _build_or_explain(training_dataset, data_args, processor, training_args.seed)
    transform = GlipTrainTransform(data_args.min_sizes, data_args.max_size, data_args.flip_prob)
    train_collator = GlipDataCollator(processor, transform=transform, train=True)
    eval_dataset, eval_collator, compute_metrics = None, None, None
    if data_args.eval_annotations:
        eval_dataset, eval_collator, compute_metrics = _build_or_explain(evaluation_setup, data_args, processor)

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


__all__ = ["DataArguments", "FinetuneInputError", "ModelArguments", "run_finetune"]
