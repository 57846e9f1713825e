"""Running a GLIP model over a benchmark's images: batches, several prompts per image sharing one vision pass,
disjoint shards per process (`accelerate launch` / torchrun) gathered at the end, and only the top detections of
each image kept, so memory does not grow with the logits."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class PromptSpec:
    """One prompt of an image: a list of class names (with `label_offset`, the index of its first name in the
    benchmark's full class list) or a caption with `phrases` (strings or (start, end) spans)."""

    text: str | list[str]
    phrases: list | None = None
    label_offset: int = 0


@dataclass
class EvaluationItem:
    """An image and its prompts. With `separate_prompts`, each prompt's detections are post-processed on their
    own, with their own `detections_per_image` cut (grounding: one result per sentence; LVIS: one per 40-name
    chunk, as the original runs each chunk as its own query); otherwise all prompts are chunks of one class list
    whose detections compete per image."""

    key: object
    image_path: Path
    prompts: list[PromptSpec]
    separate_prompts: bool = False


def fixed_size_chunks(class_names: list[str], chunk_size: int | None) -> list[PromptSpec]:
    """The class list as prompts of `chunk_size` names (the original's TEST.CHUNKED_EVALUATION), or one prompt that
    the processor splits where the text would exceed its maximum length (None)."""
    if not chunk_size or chunk_size >= len(class_names):
        return [PromptSpec(list(class_names))]
    return [PromptSpec(list(class_names[start:start + chunk_size]), label_offset=start)
            for start in range(0, len(class_names), chunk_size)]


def process_state(device: str | None = None):
    """(rank, world size) of this process: accelerate's state when accelerate is installed, else one process.

    Processes started by `accelerate launch` / torchrun that run on CPU form a gloo group (accelerate's
    `cpu=True`); the first call decides, later ones reuse that state.
    """
    try:
        from accelerate import PartialState
    except ImportError:
        return 0, 1
    cpu = not torch.cuda.is_available() or (device is not None and torch.device(device).type == "cpu")
    state = PartialState(cpu=cpu)
    return state.process_index, state.num_processes


def shard_batches(items: list, batch_size: int, rank: int, world_size: int) -> list[list]:
    """This process's batches: batch b goes to process b mod world size, so every batch holds the same images
    (hence the same padding and the same outputs) whatever the number of processes."""
    batches = [items[start:start + batch_size] for start in range(0, len(items), batch_size)]
    return batches[rank::world_size]


def gather_results(results: list, world_size: int) -> list:
    """Every process's results, on every process (order: by process)."""
    if world_size == 1:
        return results
    from accelerate.utils import gather_object

    return gather_object(results)


def _text_rows(processor, prompt: PromptSpec):
    """The processor's text-only encoding of one prompt (several rows if a class list is split)."""
    encoded = processor(text=prompt.text, phrases=prompt.phrases)
    return [(encoded["input_ids"][row], encoded["attention_mask"][row], encoded["token_maps"][row],
             encoded["label_ids"][row]) for row in range(encoded["input_ids"].shape[0])], encoded["text_labels"][0]


def _collect_rows(processor, items: list[EvaluationItem]):
    """Prompt rows (image, group, ids, mask, token map, labels) and post-processing groups [image, names, offset]:
    one group per image, or per prompt for `separate_prompts` items (labels local, offset added afterwards)."""
    rows, groups = [], []
    for image_number, item in enumerate(items):
        joint = None
        for prompt in item.prompts:
            encoded_rows, names = _text_rows(processor, prompt)
            if item.separate_prompts:
                groups.append([image_number, names, prompt.label_offset])
                offset = 0
            else:
                if joint is None:
                    joint = [image_number, [], 0]
                    groups.append(joint)
                offset = len(joint[1])  # chunks of one class list follow each other
                joint[1] = joint[1] + names
            for input_ids, attention_mask, token_map, label_ids in encoded_rows:
                labels = torch.where(label_ids >= 0, label_ids + offset, label_ids)
                rows.append((image_number, len(groups) - 1, input_ids, attention_mask, token_map, labels))
    return rows, groups


def _pad_rows(rows, pad_token_id: int):
    """The rows' ids, masks, token maps and labels padded to the longest prompt and the most phrases."""
    length = max(int(row[3].sum()) for row in rows)
    phrases = max(row[4].shape[0] for row in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    token_maps = torch.zeros((len(rows), phrases, length))
    label_ids = torch.full((len(rows), phrases), -1, dtype=torch.long)
    for index, (_, _, ids, mask, token_map, labels) in enumerate(rows):
        used = min(length, ids.shape[0])
        input_ids[index, :used], attention_mask[index, :used] = ids[:used], mask[:used]
        token_maps[index, : token_map.shape[0], :used] = token_map[:, :used]
        label_ids[index, : labels.shape[0]] = labels
    return input_ids, attention_mask, token_maps, label_ids


def build_batch(processor, images, items: list[EvaluationItem]):
    """Model inputs for a batch (every prompt row of every image, one vision pass per image), the matching
    post-processing inputs, and per post-processing group its image and the offset of its labels."""
    rows, groups = _collect_rows(processor, items)
    input_ids, attention_mask, token_maps, label_ids = _pad_rows(rows, processor.tokenizer.pad_token_id or 0)
    pixels = processor.image_processor(images, return_tensors="pt")
    group_images = torch.tensor([group[0] for group in groups])
    model_inputs = {"pixel_values": pixels["pixel_values"], "input_ids": input_ids,
                    "attention_mask": attention_mask, "image_index": torch.tensor([row[0] for row in rows])}
    post_inputs = {"token_maps": token_maps, "label_ids": label_ids,
                   "image_index": torch.tensor([row[1] for row in rows]),
                   "image_sizes": pixels["image_sizes"][group_images],
                   "original_sizes": pixels["original_sizes"][group_images],
                   "text_labels": [list(group[1]) for group in groups]}
    return model_inputs, post_inputs, [(group[0], group[2]) for group in groups]


def open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from None


def run_items(model, processor, items: list[EvaluationItem], batch_size: int = 1, device: str = "cpu",
              bf16: bool = False, description: str = "evaluating") -> list[tuple[object, list[dict]]]:
    """(item key, per-group detections) for every item, over all processes.

    Each group's detections are plain lists (`scores`, `labels`, `boxes` xyxy in the original image), at most
    `processor.detections_per_image` of them, best first.
    """
    from tqdm.auto import tqdm

    rank, world_size = process_state(device)
    numbered = list(enumerate(items))
    batches = shard_batches(numbered, batch_size, rank, world_size)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else nullcontext()
    results = []
    with tqdm(total=sum(len(batch) for batch in batches), desc=description, unit="img",
              disable=rank != 0) as progress:
        for batch in batches:
            batch_items = [item for _, item in batch]
            images = [open_image(item.image_path) for item in batch_items]
            model_inputs, post_inputs, group_origins = build_batch(processor, images, batch_items)
            with torch.no_grad(), autocast:
                outputs = model(**{key: value.to(device) for key, value in model_inputs.items()})
            detections = processor.post_process_grounded_object_detection(outputs, post_inputs, threshold=0.0)
            per_item = [[] for _ in batch]
            for (image_number, label_offset), detection in zip(group_origins, detections):
                per_item[image_number].append(_compact(detection, label_offset))
            results += [(position, item.key, groups) for (position, item), groups in zip(batch, per_item)]
            progress.update(len(batch))
    gathered = sorted(gather_results(results, world_size), key=lambda entry: entry[0])
    return [(key, groups) for _, key, groups in gathered]


def _compact(detection: dict, label_offset: int = 0) -> dict:
    order = torch.argsort(detection["scores"].float(), descending=True, stable=True)
    return {"scores": detection["scores"][order].float().cpu().tolist(),
            "labels": (detection["labels"][order].cpu() + label_offset).tolist(),
            "boxes": detection["boxes"][order].float().cpu().tolist()}


def class_names_in_order(categories: list[dict]) -> tuple[list[str], list[int]]:
    """Category names and ids sorted by id (the original's label order)."""
    ordered = sorted(categories, key=lambda category: category["id"])
    return [category["name"] for category in ordered], [category["id"] for category in ordered]


__all__ = ["EvaluationItem", "PromptSpec", "build_batch", "class_names_in_order", "fixed_size_chunks",
           "run_items", "shard_batches"]
