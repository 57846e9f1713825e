"""Flickr30k Entities phrase grounding: the dataset's files and Recall@k with the ANY-box and MERGED-box protocols.

A phrase is recalled at k when one of its first k predicted boxes overlaps a ground-truth box of the phrase with
IoU >= 0.5. ANY-box ("separate" ground truth, GLIP's default) compares with each of the phrase's boxes; MERGED-box
compares with the one box enclosing them all. The upper bound (UB) takes every predicted box. Phrases without a
box (scene, not visible) are not evaluated, as in MDETR and GLIP.

Files (the Flickr30k Entities release): `Annotations/<image>.xml` (Pascal-VOC-like objects whose `name` is the
entity id), `Sentences/<image>.txt` (one sentence a line, entities marked `[/EN#<id>/<type> words]`) and the split
lists `train.txt`, `val.txt`, `test.txt` (one image id a line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

FLICKR_METRIC_NAMES = ["R@1", "R@5", "R@10", "UB"]
RECALL_AT = (1, 5, 10)
PROTOCOLS = ("any", "merged")
IOU_THRESHOLD = 0.5
_ENTITY = re.compile(r"\[/EN#(\d+)((?:/[^\s\]]+)*)\s+([^\]]*)\]")


@dataclass
class Phrase:
    """An entity mention: its text, character span in the plain sentence, entity id and coarse types."""

    text: str
    start: int
    end: int
    entity_id: str
    types: list[str] = field(default_factory=list)


@dataclass
class Sentence:
    text: str
    phrases: list[Phrase]


def parse_sentence(line: str) -> Sentence:
    """A plain sentence and its entity phrases from one annotated line of a `Sentences/*.txt` file."""
    line = " ".join(line.split())  # words joined by single spaces, as MDETR rebuilds the sentence
    text, phrases, position = "", [], 0
    for match in _ENTITY.finditer(line):
        text += line[position:match.start()]
        words = " ".join(match.group(3).split())
        start = len(text)
        text += words
        types = [part for part in match.group(2).split("/") if part]
        phrases.append(Phrase(words, start, len(text), match.group(1), types))
        position = match.end()
    text += line[position:]
    return Sentence(text, phrases)


def read_sentences(path) -> list[Sentence]:
    with open(path, encoding="utf-8") as handle:
        return [parse_sentence(line.strip()) for line in handle if line.strip()]


def read_boxes(path) -> dict[str, list[list[float]]]:
    """Entity id -> its boxes [x1, y1, x2, y2] from an `Annotations/*.xml` file (objects without a box skipped)."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise ValueError(f"{path} is not valid XML: {error}") from None
    boxes: dict[str, list[list[float]]] = {}
    for index, element in enumerate(root.findall("object")):
        box = element.find("bndbox")
        if box is None:
            continue
        try:
            corners = [float(box.find(tag).text) for tag in ("xmin", "ymin", "xmax", "ymax")]
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"{path}: object {index} has a bndbox without numeric xmin/ymin/xmax/ymax") from None
        if corners[2] < corners[0] or corners[3] < corners[1]:
            raise ValueError(f"{path}: object {index} has a box {corners} with a negative width or height")
        for name in element.findall("name"):
            boxes.setdefault(name.text.strip(), []).append(corners)
    return boxes


def merge_boxes(boxes: list[list[float]]) -> list[list[float]]:
    """The smallest box enclosing them all (MERGED-box ground truth)."""
    array = np.asarray(boxes, dtype=np.float64)
    return [[array[:, 0].min(), array[:, 1].min(), array[:, 2].max(), array[:, 3].max()]]


@dataclass
class FlickrSample:
    """One sentence of one image, with its evaluated phrases (those with boxes) and their ground-truth boxes."""

    image_id: str
    sentence_id: int
    caption: str
    phrases: list[Phrase]
    boxes: list[list[list[float]]]


def load_flickr_split(root, split: str = "test", protocol: str = "any", image_ids=None) -> list[FlickrSample]:
    """The evaluated sentences of a split (or of `image_ids`); sentence ids count every sentence of the file."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"Flickr30k protocol must be one of {PROTOCOLS}, got {protocol!r}")
    root = Path(root)
    if image_ids is None:
        split_file = root / f"{split}.txt"
        if not split_file.is_file():
            raise ValueError(f"Flickr30k split list {split_file} does not exist (expected {split}.txt in {root})")
        image_ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    samples = []
    for image_id in image_ids:
        for folder, suffix in (("Annotations", ".xml"), ("Sentences", ".txt")):
            if not (root / folder / f"{image_id}{suffix}").is_file():
                raise ValueError(f"Flickr30k file {root / folder / (image_id + suffix)} does not exist")
        boxes = read_boxes(root / "Annotations" / f"{image_id}.xml")
        if protocol == "merged":
            boxes = {entity: merge_boxes(entity_boxes) for entity, entity_boxes in boxes.items()}
        for sentence_id, sentence in enumerate(read_sentences(root / "Sentences" / f"{image_id}.txt")):
            phrases = [phrase for phrase in sentence.phrases if phrase.entity_id in boxes]
            if phrases:
                samples.append(FlickrSample(image_id, sentence_id, sentence.text, phrases,
                                            [boxes[phrase.entity_id] for phrase in phrases]))
    return samples


def _iou_xyxy(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(N, M) IoU of continuous [x1, y1, x2, y2] boxes (MDETR's convention, no +1)."""
    width = np.minimum(first[:, None, 2], second[None, :, 2]) - np.maximum(first[:, None, 0], second[None, :, 0])
    height = np.minimum(first[:, None, 3], second[None, :, 3]) - np.maximum(first[:, None, 1], second[None, :, 1])
    intersection = width.clip(min=0) * height.clip(min=0)
    area_first = (first[:, 2] - first[:, 0]) * (first[:, 3] - first[:, 1])
    area_second = (second[:, 2] - second[:, 0]) * (second[:, 3] - second[:, 1])
    union = area_first[:, None] + area_second[None] - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1), 0.0)


def flickr_recall(samples: list[FlickrSample], predictions: list[dict], source="predictions") -> dict[str, float]:
    """R@1, R@5, R@10 and UB over every phrase of `samples`.

    `predictions` are MDETR's format: one entry per (image, sentence) with `image_id`, `sentence_id` and `boxes`,
    a list with one ranked list of [x1, y1, x2, y2] boxes per evaluated phrase. Every evaluated sentence needs one
    entry; entries for sentences that are not evaluated are ignored.
    """
    by_key = {}
    for index, prediction in enumerate(predictions):
        for key in ("image_id", "sentence_id", "boxes"):
            if key not in prediction:
                raise ValueError(f"{source}: entry {index} has no field '{key}'")
        key = (str(prediction["image_id"]), int(prediction["sentence_id"]))
        if key in by_key:
            raise ValueError(f"{source}: entry {index} repeats image {key[0]} sentence {key[1]}")
        by_key[key] = (index, prediction["boxes"])
    hits = {name: 0 for name in FLICKR_METRIC_NAMES}
    total = 0
    for sample in samples:
        key = (sample.image_id, sample.sentence_id)
        if key not in by_key:
            raise ValueError(f"{source}: no entry for image {sample.image_id} sentence {sample.sentence_id}")
        index, ranked_lists = by_key[key]
        if len(ranked_lists) != len(sample.phrases):
            raise ValueError(f"{source}: entry {index} has {len(ranked_lists)} box lists, image {sample.image_id} "
                             f"sentence {sample.sentence_id} has {len(sample.phrases)} phrases with boxes")
        for ranked, truths in zip(ranked_lists, sample.boxes):
            total += 1
            ranked = np.asarray(ranked, dtype=np.float64).reshape(-1, 4)
            if not len(ranked):
                continue
            best = _iou_xyxy(ranked, np.asarray(truths, dtype=np.float64)).max(axis=1)
            for k in RECALL_AT:
                hits[f"R@{k}"] += bool(best[:k].max() >= IOU_THRESHOLD)
            hits["UB"] += bool(best.max() >= IOU_THRESHOLD)
    return {name: (count / total if total else 0.0) for name, count in hits.items()}


__all__ = ["FLICKR_METRIC_NAMES", "FlickrSample", "flickr_recall", "load_flickr_split", "parse_sentence",
           "read_boxes", "read_sentences"]
