"""Fine-tune GLIP on COCO-format detection data (or MDETR / ODVG grounding data) with transformers' Trainer.

    python examples/finetune.py --model_name_or_path glip-t --train_annotations train.json --train_images images/ \
        --eval_annotations val.json --eval_images images/ --output_dir runs/glip-t-ft --transfer_mode full \
        --learning_rate 1e-4 --text_learning_rate 1e-5 --num_train_epochs 12 --per_device_train_batch_size 4

Runs on CPU, one GPU, or several processes with `accelerate launch --multi_gpu --num_processes N` / torchrun
(without a GPU the processes train on CPU over gloo). Transfer modes are the GLIP paper's: `full`,
`prompt` (prompt tuning: only learnt prompt embeddings train) and `linear_probe` (only the head's scoring layers).
Evaluation reports COCO AP, LVIS AP or LVIS Fixed AP through the package's `glip_detection` evaluate module
(`--eval_metric`; `--odinw_dataset` evaluates with an ODinW dataset's prompt); the final model and processor are
saved with `save_pretrained`. In Python, `glip_hf.finetuning_glip.run_finetune(model_args, data_args,
training_args)` runs the same and returns the metrics.
"""

from __future__ import annotations

import sys

import torch
from transformers import HfArgumentParser, TrainingArguments

from glip_hf.finetuning_glip import DataArguments, FinetuneInputError, ModelArguments, run_finetune


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not torch.cuda.is_available() and "--use_cpu" not in argv:
        # Without an accelerator, processes started by `accelerate launch` / torchrun must form a CPU (gloo) group.
        argv += ["--use_cpu", "true"]
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    try:
        return run_finetune(model_args, data_args, training_args)
    except FinetuneInputError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
