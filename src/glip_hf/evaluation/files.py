"""Reading and checking the benchmark files: ground truth and prediction JSON, with errors that name the file and
the field at fault."""

from __future__ import annotations

import contextlib
import io
import json
import numbers
from pathlib import Path


def read_json(path, what: str):
    """The parsed JSON of `path`; a missing or malformed file is a ValueError naming it and `what` it should be."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} file {path} is not valid JSON: {error}") from None


def check_detection_ground_truth(data, path, lvis: bool = False) -> dict:
    """A COCO (or, with `lvis`, LVIS) detection annotation dict with its required fields."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a detection ground truth is a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: field '{key}' is missing or not a list")
    if not data["categories"]:
        raise ValueError(f"{path}: field 'categories' is empty")
    image_ids = {image.get("id") for image in data["images"]}
    category_ids = {category.get("id") for category in data["categories"]}
    for index, annotation in enumerate(data["annotations"]):
        where = f"{path}: annotations[{index}]"
        _check_box(annotation.get("bbox"), where)
        if annotation.get("image_id") not in image_ids:
            raise ValueError(f"{where}: 'image_id' {annotation.get('image_id')!r} is not in 'images'")
        if annotation.get("category_id") not in category_ids:
            raise ValueError(f"{where}: 'category_id' {annotation.get('category_id')!r} is not in 'categories'")
    if lvis:
        for index, image in enumerate(data["images"]):
            for key in ("neg_category_ids", "not_exhaustive_category_ids"):
                if not isinstance(image.get(key), list):
                    raise ValueError(f"{path}: images[{index}] has no list '{key}' (not an LVIS annotation file?)")
        for index, category in enumerate(data["categories"]):
            if category.get("frequency") not in ("r", "c", "f"):
                raise ValueError(f"{path}: categories[{index}] 'frequency' must be 'r', 'c' or 'f', "
                                 f"got {category.get('frequency')!r}")
    return data


def check_detection_results(results, ground_truth: dict, path) -> list[dict]:
    """COCO/LVIS result entries (`image_id`, `category_id`, `bbox` [x, y, w, h], `score`) that fit the ground
    truth: known image and category ids, boxes of non-negative size, numeric scores."""
    if not isinstance(results, list):
        raise ValueError(f"{path}: detection results are a JSON list of entries, got {type(results).__name__}")
    image_ids = {image["id"] for image in ground_truth["images"]}
    category_ids = {category["id"] for category in ground_truth["categories"]}
    for index, entry in enumerate(results):
        where = f"{path}: entry {index}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not an object")
        for key in ("image_id", "category_id", "bbox", "score"):
            if key not in entry:
                raise ValueError(f"{where} has no field '{key}'")
        if entry["image_id"] not in image_ids:
            raise ValueError(f"{where}: 'image_id' {entry['image_id']!r} is absent from the ground truth")
        if entry["category_id"] not in category_ids:
            raise ValueError(f"{where}: 'category_id' {entry['category_id']!r} is absent from the ground truth")
        if not _is_number(entry["score"]):
            raise ValueError(f"{where}: 'score' must be a number, got {entry['score']!r}")
        _check_box(entry["bbox"], where)
    return results


def _check_box(box, where: str) -> None:
    if not isinstance(box, list) or len(box) != 4 or not all(_is_number(value) for value in box):
        raise ValueError(f"{where}: 'bbox' must be [x, y, width, height] numbers, got {box!r}")
    if box[2] < 0 or box[3] < 0:
        raise ValueError(f"{where}: 'bbox' {box} has a negative width or height")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def coco_from_dict(data: dict):
    """A pycocotools `COCO` index of an annotation dict, quietly."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


__all__ = ["check_detection_ground_truth", "check_detection_results", "coco_from_dict", "read_json"]
