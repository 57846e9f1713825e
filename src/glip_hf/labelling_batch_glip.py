"""One shard of a labelling run: read its images, batch them by size, run the teacher, keep the policy's boxes as
ODVG records."""

from __future__ import annotations

import copy
import io
import os
from contextlib import nullcontext
from pathlib import Path

import torch
from PIL import Image

from .labelling_policy_glip import apply_policy


def _open(source):
    if isinstance(source, dict):
        return Image.open(io.BytesIO(source["bytes"])) if source.get("bytes") else Image.open(source["path"])
    return Image.open(source)


def read_image(source) -> Image.Image:
    """RGB pixels as stored (no EXIF rotation, as `data_glip.load_example_image` reads them for training)."""
    with _open(source) as opened:
        opened.load()
        return opened.convert("RGB")


def image_size(source) -> tuple[int, int]:
    """(width, height) from the header alone."""
    with _open(source) as opened:
        return opened.size


class ShardLabeller:
    """Labels lists of `CorpusItem`s with `run.model`; the prompt of a class list is encoded once for the run."""

    def __init__(self, run, find_phrases):
        self.run = run
        self.find_phrases = find_phrases
        # Detections are capped by the policy after its thresholds, not by the processor before them.
        self.processor = copy.copy(run.processor)
        self.processor.detections_per_image = 0
        self.processor.nms_threshold = run.policy.nms_threshold
        run.policy.check_classes(run.classes)
        self.class_prompt = self.processor(text=list(run.classes)) if run.classes is not None else None
        self._class_text_features = None  # the class prompt through the text tower, computed on first use

    # ----- inputs ------------------------------------------------------------------------------------------------

    def _caption_prompt(self, item):
        """The caption's noun-phrase spans, checked against the processor (None with the reason if unusable)."""
        caption = item.caption
        if not isinstance(caption, str) or not caption.strip():
            return None, "empty caption"
        spans = self.find_phrases(caption, self.run.extractor)
        if not spans:
            return None, f"no noun phrase found in the caption {caption!r}"
        try:
            self.processor(text=caption, phrases=[list(span) for span in spans])
        except ValueError as error:
            return None, str(error)
        return spans, None

    def _inputs(self, images, captions, spans) -> dict:
        if self.class_prompt is None:
            phrases = [[list(span) for span in image_spans] for image_spans in spans]
            return dict(self.processor(images=images, text=captions, phrases=phrases))
        inputs = self._class_prompt_rows(len(images))
        inputs.update(self.processor.image_processor(images, return_tensors="pt"))
        return inputs

    def _class_prompt_rows(self, count: int) -> dict:
        """The run's encoded class prompt repeated for `count` images (one row per image and chunk); the text
        features take the place of `input_ids` (`_class_prompt_features`)."""
        prompt = self.class_prompt
        chunks = prompt["input_ids"].shape[0]
        return {
            "attention_mask": prompt["attention_mask"].repeat(count, 1),
            "token_maps": prompt["token_maps"].repeat(count, 1, 1),
            "label_ids": prompt["label_ids"].repeat(count, 1),
            "image_index": torch.arange(count).repeat_interleave(chunks),
            "text_labels": prompt["text_labels"] * count,
        }

    # ----- one shard ---------------------------------------------------------------------------------------------

    def label_shard(self, items, bar) -> tuple[list[dict], list[dict]]:
        """ODVG records (corpus order) and error records of `items`."""
        errors, ready = [], []
        for item in items:
            try:
                size = image_size(item.source)
            except Exception as error:  # noqa: BLE001 - any unreadable file is reported, never fatal
                errors.append(_error(item, f"unreadable image: {type(error).__name__}: {error}"))
                bar.update(1)
                continue
            spans = None
            if self.class_prompt is None:
                spans, reason = self._caption_prompt(item)
                if spans is None:
                    errors.append(_error(item, reason))
                    bar.update(1)
                    continue
            ready.append((item, size, spans))
        # Similar sizes share a batch, so padding stays small; the order depends on the shard's content only.
        ready.sort(key=lambda entry: (entry[1][1], entry[1][0], entry[0].index))
        records = {}
        for start in range(0, len(ready), self.run.batch_size):
            batch = ready[start:start + self.run.batch_size]
            for item, record in self._label_batch(batch, errors):
                records[item.index] = record
            bar.update(len(batch))
        errors.sort(key=lambda error: error["index"])
        return [records[index] for index in sorted(records)], errors

    def _decode(self, batch, errors):
        decoded = []
        for item, size, spans in batch:
            try:
                image = read_image(item.source)
            except Exception as error:  # noqa: BLE001 - a header can parse while the pixels are corrupt
                errors.append(_error(item, f"corrupt image: {type(error).__name__}: {error}"))
                continue
            decoded.append((item, image, spans))
        return decoded

    def _label_batch(self, batch, errors):
        decoded = self._decode(batch, errors)
        if not decoded:
            return []
        images = [image for _, image, _ in decoded]
        captions = [item.caption for item, _, _ in decoded]
        spans = [image_spans for _, _, image_spans in decoded]
        inputs = self._inputs(images, captions, spans)
        results = self._detect(inputs)
        labelled = []
        for (item, image, image_spans), result, phrases in zip(decoded, results, inputs["text_labels"]):
            result = apply_policy(result, self.run.policy, phrases)
            self._save_bytes(item, image)
            labelled.append((item, odvg_record(item, image.size, result, phrases, image_spans)))
        return labelled

    def _detect(self, inputs) -> list[dict]:
        device = torch.device(self.run.device)
        tensors = {key: value.to(device) if isinstance(value, torch.Tensor) else value
                   for key, value in inputs.items()}
        model_inputs = {key: tensors[key] for key in ("pixel_values", "pixel_mask", "input_ids", "attention_mask",
                                                      "image_index") if key in tensors}
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if self.run.bf16 else nullcontext()
        with torch.no_grad(), autocast:
            if self.class_prompt is not None:
                model_inputs["text_features"] = self._class_prompt_features(model_inputs["attention_mask"].shape[0])
            outputs = self.run.model(**model_inputs)
        outputs.logits, outputs.pred_boxes = outputs.logits.float(), outputs.pred_boxes.float()
        outputs.centerness = outputs.centerness.float()
        results = self.processor.post_process_grounded_object_detection(
            outputs, tensors, threshold=self.run.policy.lowest_threshold())
        return [{key: value.cpu() if isinstance(value, torch.Tensor) else value for key, value in result.items()}
                for result in results]

    def _class_prompt_features(self, rows: int) -> torch.Tensor:
        """The class prompt's text features for `rows` prompt rows (its chunks repeated per image); the text tower
        runs on the first call only."""
        if self._class_text_features is None:
            device = torch.device(self.run.device)
            self._class_text_features = self.run.model.encode_prompt(
                self.class_prompt["input_ids"].to(device), self.class_prompt["attention_mask"].to(device))
        return self._class_text_features.repeat(rows // self._class_text_features.shape[0], 1, 1)

    def _save_bytes(self, item, image):
        """A dataset row that holds only bytes gets a file under the output folder (the labels name it)."""
        if not os.path.isabs(item.filename):
            if isinstance(item.source, (str, os.PathLike)):
                return  # a file of the --images folder
            path = Path(self.run.output) / item.filename
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            item.filename = str(path.resolve())


def round_values(values) -> list[float]:
    return [round(float(value), 2) for value in values]


def odvg_record(item, size: tuple[int, int], detections: dict, phrases: list[str],
                spans=None) -> dict:
    """One ODVG line; each box keeps its score and phrase. `spans` (caption mode): the caption span of each phrase."""
    width, height = size
    boxes = detections["boxes"].tolist()
    # Inclusive pixel indices -> ODVG's x + w; rescaled from the model's input they may pass the border by < 1 px.
    exclusive = [[max(x1, 0.0), max(y1, 0.0), min(x2 + 1, width), min(y2 + 1, height)] for x1, y1, x2, y2 in boxes]
    record = {"filename": item.filename, "height": height, "width": width}
    labels, scores = detections["labels"].tolist(), detections["scores"].tolist()
    if spans is None:
        record["detection"] = {"instances": [
            {"bbox": round_values(box), "label": label, "category": phrases[label], "score": round(score, 4)}
            for box, label, score in zip(exclusive, labels, scores)]}
    else:
        record["grounding"] = {"caption": item.caption, "regions": [
            {"bbox": round_values(box), "phrase": phrases[label], "tokens_positive": [list(spans[label])],
             "score": round(score, 4)} for box, label, score in zip(exclusive, labels, scores)]}
    return record


def box_count(record: dict) -> int:
    if "detection" in record:
        return len(record["detection"]["instances"])
    return len(record["grounding"]["regions"])


def _error(item, reason: str) -> dict:
    return {"index": item.index, "image": item.filename, "reason": reason}


__all__ = ["ShardLabeller", "box_count", "image_size", "odvg_record", "read_image", "round_values"]
