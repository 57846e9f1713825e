"""Fine-tuning GLIP with transformers' `Trainer`: the GLIP paper's transfer modes, a separate text learning rate,
EMA weights, and COCO AP evaluation whose predictions are reduced to the top detections before being gathered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainerCallback

from .evaluation_glip import coco_evaluate, pack_detections, packed_to_coco_results

TRANSFER_MODES = ("full", "prompt", "linear_probe")
# What the original's linear probe leaves trainable (`GeneralizedVLRCNN` with LINEAR_PROB).
LINEAR_PROBE_PARAMETERS = (
    "head.bbox_pred.", "head.centerness.", "head.text_projection.", "head.log_scale", "head.text_bias",
    "head.logit_bias",
)
EMA_FILE = "ema_weights.safetensors"


def set_transfer_mode(model, mode: str) -> list[str]:
    """Freeze what the mode keeps fixed; returns the trainable parameter names.

    full: everything trains. prompt: only learnable prompt embeddings added to the text features (the paper's
    prompt tuning; the embeddings are created if the model has none). linear_probe: only the head's box,
    centerness and token-scoring parameters.
    """
    if mode not in TRANSFER_MODES:
        raise ValueError(f"Unknown transfer mode {mode!r}; choose one of {TRANSFER_MODES}")
    if mode == "prompt" and model.model.prompt_embeddings is None:
        config = model.config
        model.config.prompt_tuning = True
        weight = model.model.text_backbone.embeddings.word_embeddings.weight
        model.model.prompt_embeddings = torch.nn.Parameter(
            torch.zeros(config.max_text_len, config.text_config.hidden_size, device=weight.device, dtype=weight.dtype)
        )
    for name, parameter in model.named_parameters():
        if mode == "full":
            parameter.requires_grad_(True)
        elif mode == "prompt":
            parameter.requires_grad_(name == "model.prompt_embeddings")
        else:
            parameter.requires_grad_(name.startswith(LINEAR_PROBE_PARAMETERS))
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def parameter_groups(model, learning_rate, text_learning_rate=None, weight_decay=0.0):
    """AdamW groups: the text tower at `text_learning_rate` (the original's LANG_LR), no decay on norms/biases."""
    groups = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_text = name.startswith("model.text_backbone.")
        no_decay = parameter.ndim <= 1 or name.endswith(".bias")
        key = (is_text, no_decay)
        if key not in groups:
            lr = text_learning_rate if is_text and text_learning_rate is not None else learning_rate
            groups[key] = {"params": [], "lr": lr, "weight_decay": 0.0 if no_decay else weight_decay}
        groups[key]["params"].append(parameter)
    return list(groups.values())


class EmaCallback(TrainerCallback):
    """Exponential moving average of the trainable weights (the original's MODEL_EMA). The averages are saved in
    every checkpoint (so resuming continues exactly) and copied into the model when training ends."""

    def __init__(self, model, decay: float = 0.999):
        self.model, self.decay = model, decay
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def on_step_end(self, args, state, control, **kwargs):
        for name, parameter in self.model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(parameter.detach().float(), 1.0 - self.decay)

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and state.is_world_process_zero:
            save_file({name: tensor.contiguous().cpu() for name, tensor in self.shadow.items()}, folder / EMA_FILE)

    def load(self, checkpoint_folder) -> None:
        path = Path(checkpoint_folder) / EMA_FILE
        if path.is_file():
            for name, tensor in load_file(path).items():
                self.shadow[name].copy_(tensor)

    @torch.no_grad()
    def on_train_end(self, args, state, control, **kwargs):
        for name, parameter in self.model.named_parameters():
            if name in self.shadow:
                parameter.copy_(self.shadow[name].to(parameter.dtype))


class GlipTrainer(Trainer):
    """`Trainer` with GLIP's optimizer groups, per-term loss logging and detection evaluation.

    `eval_data_collator` (default: `data_collator`) builds the evaluation batches, e.g. a `GlipDataCollator` with
    the class-list prompt. Evaluation batches are post-processed inside `prediction_step` into at most
    `detections_per_image` boxes per image, so what the trainer gathers across processes is small and fixed-size;
    `compute_metrics` (see `make_coco_compute_metrics`) turns them into COCO AP.
    """

    def __init__(self, *args, text_learning_rate=None, ema_decay=None, eval_data_collator=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.text_learning_rate = text_learning_rate
        self.eval_data_collator = eval_data_collator
        self._loss_terms: dict[str, list[float]] = {}
        self.ema = EmaCallback(self.model, ema_decay) if ema_decay else None
        if self.ema is not None:
            self.add_callback(self.ema)

    def _get_dataloader(self, dataset, description, *args, is_training: bool = False, **kwargs):
        # Trainer builds every loader with `self.data_collator`; evaluation and test loaders take the eval one.
        if is_training or self.eval_data_collator is None:
            return super()._get_dataloader(dataset, description, *args, is_training=is_training, **kwargs)
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super()._get_dataloader(dataset, description, *args, is_training=is_training, **kwargs)
        finally:
            self.data_collator = train_collator

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            groups = parameter_groups(self.model, self.args.learning_rate, self.text_learning_rate,
                                      self.args.weight_decay)
            optimizer_class, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            optimizer_kwargs.pop("lr", None)
            self.optimizer = optimizer_class(groups, **optimizer_kwargs)
        return self.optimizer

    def train(self, resume_from_checkpoint=None, **kwargs):
        if self.ema is not None and isinstance(resume_from_checkpoint, (str, Path)):
            self.ema.load(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # transformers writes the Swin tower under its legacy key names and maps them back only in
        # `from_pretrained`; the Trainer's raw `load_state_dict` would miss them. Load through `from_pretrained`.
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        loaded = type(target).from_pretrained(resume_from_checkpoint)
        target.load_state_dict(loaded.state_dict(), strict=True)

    def _load_best_model(self):
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        for name, value in (outputs.loss_dict or {}).items():
            if name != "loss":
                self._loss_terms.setdefault(name, []).append(float(value.detach()))
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self._loss_terms:
            logs.update({name: sum(v) / len(v) for name, v in self._loss_terms.items()})
            self._loss_terms = {}
        super().log(logs, *args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            outputs = model(**inputs)
        loss = outputs.loss.detach() if outputs.loss is not None else None
        if prediction_loss_only:
            return loss, None, None
        processor = self.processing_class
        results = processor.post_process_grounded_object_detection(outputs, inputs, threshold=0.0)
        packed = pack_detections(results, processor.detections_per_image).to(outputs.logits.device)
        return loss, packed, inputs["image_ids"]


def make_coco_compute_metrics(coco_gt, label_to_category):
    """`compute_metrics` for `GlipTrainer`: COCO AP of the gathered detections on the images they cover."""

    def compute_metrics(prediction):
        results = packed_to_coco_results(prediction.predictions, prediction.label_ids, label_to_category)
        return coco_evaluate(coco_gt, results, image_ids=prediction.label_ids)

    return compute_metrics


def make_detection_compute_metrics(ground_truth: dict, label_to_category, benchmark: str = "coco"):
    """`compute_metrics` for `GlipTrainer` through the shipped `glip_detection` evaluate module: COCO AP ("coco"),
    LVIS standard AP ("lvis") or LVIS Fixed AP ("lvis-fixed") of the gathered detections on the images they cover.
    """
    from .evaluation import load_metric

    # In memory: every process of a distributed run computes the metric on the gathered predictions.
    metric = load_metric("glip_detection", benchmark, keep_in_memory=True)

    def compute_metrics(prediction):
        results = packed_to_coco_results(prediction.predictions, prediction.label_ids, label_to_category,
                                         inclusive_width=benchmark == "coco")
        image_ids = [int(i) for i in np.asarray(prediction.label_ids).reshape(-1)]
        by_image = {image_id: {"boxes": [], "scores": [], "category_ids": []} for image_id in image_ids}
        for entry in results:
            detections = by_image[entry["image_id"]]
            detections["boxes"].append(entry["bbox"])
            detections["scores"].append(entry["score"])
            detections["category_ids"].append(entry["category_id"])
        metric.add_batch(predictions=list(by_image.values()), references=list(by_image))
        return metric.compute(ground_truth=ground_truth)

    return compute_metrics


__all__ = [
    "LINEAR_PROBE_PARAMETERS",
    "TRANSFER_MODES",
    "EmaCallback",
    "GlipTrainer",
    "make_coco_compute_metrics",
    "make_detection_compute_metrics",
    "parameter_groups",
    "set_transfer_mode",
]
