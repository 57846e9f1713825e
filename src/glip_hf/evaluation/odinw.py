"""ODinW (Object Detection in the Wild): the 13- and 35-dataset suites with the original's prompt settings, and
its few-shot splits.

`odinw_datasets.json` holds, per dataset of microsoft/GLIP's `configs/odinw_13` and `configs/odinw_35`, the split
the config evaluates, its training split, the category names that override the annotation file's
(`DATASETS.OVERRIDE_CATEGORY`) and the caption prompt (`DATASETS.CAPTION_PROMPT`: a prefix, name and suffix per
category), paths relative to the ODinW root folder.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

SPEC_FILE = Path(__file__).with_name("odinw_datasets.json")
SUITES = ("odinw_13", "odinw_35")
FEW_SHOT_COUNTS = (1, 3, 5, 10)
# The seeds of the original's prepared splits (`fewshot_train_shot{k}_seed{s}.json`, DATASETS.SHUFFLE_SEED).
FEW_SHOT_SEEDS = (3, 30, 300)


@dataclass
class OdinwDataset:
    name: str
    test: dict
    train: dict
    categories: list[dict] | None = None
    caption_prompt: list[dict] | None = field(default=None)


@cache
def _specs() -> dict:
    return json.loads(SPEC_FILE.read_text())


def odinw_suite(suite: str = "odinw_13") -> list[OdinwDataset]:
    """The datasets of a suite ("odinw_13" or "odinw_35"), in the original's order."""
    if suite not in SUITES:
        raise ValueError(f"ODinW suite must be one of {SUITES}, got {suite!r}")
    return [OdinwDataset(**row) for row in _specs()[suite]]


def find_odinw_dataset(name: str) -> OdinwDataset:
    """A dataset by "suite/name" (e.g. "odinw_35/pothole") or by name alone (ODinW-13's settings first: the two
    suites share datasets, and ODinW-35's configs add caption prompts to four of them)."""
    suite, _, short = name.rpartition("/")
    for candidate in [suite] if suite else SUITES:
        for dataset in odinw_suite(candidate):
            if dataset.name == short:
                return dataset
    raise ValueError(f"{name!r} is not an ODinW dataset (give a name of odinw_13 / odinw_35, or suite/name)")


def detection_prompt(dataset: OdinwDataset, ground_truth: dict, separator: str = ". "):
    """(class names or caption, phrase spans or None, category ids in label order) for a dataset.

    Categories come in id order, named as the config overrides them. With a caption prompt the caption is
    prefix + name + suffix per category joined by the separator, and each phrase spans the name only, as the
    original's `create_queries_and_maps`.
    """
    categories = sorted(dataset.categories or ground_truth["categories"], key=lambda category: category["id"])
    ids = [category["id"] for category in categories]
    if not dataset.caption_prompt:
        return [category["name"] for category in categories], None, ids
    if len(dataset.caption_prompt) != len(categories):
        raise ValueError(f"ODinW {dataset.name}: {len(dataset.caption_prompt)} caption prompt entries for "
                         f"{len(categories)} categories")
    caption, spans = "", []
    for index, part in enumerate(dataset.caption_prompt):
        caption += part["prefix"]
        spans.append((len(caption), len(caption) + len(part["name"])))
        caption += part["name"] + part["suffix"]
        if index != len(categories) - 1:
            caption += separator
    return caption, spans, ids


def _has_valid_box(annotations: list[dict]) -> bool:
    # The original drops images whose boxes all have a side of at most one pixel.
    return any(all(side > 1 for side in annotation["bbox"][2:]) for annotation in annotations)


def sample_few_shot(ground_truth: dict, shots: int, seed: int) -> dict:
    """A k-shot subset of a COCO detection dict by the original's greedy rule.

    Images with a valid box, sorted by id and shuffled with `random.Random(seed)` (seed 0: not shuffled), are
    taken in turn while any category they contain still needs examples; a taken image counts once for each of
    its categories. The subset keeps all annotations of the images taken.
    """
    if shots <= 0:
        raise ValueError(f"shots must be positive, got {shots}")
    by_image: dict = {}
    for annotation in ground_truth["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    image_ids = sorted(image_id for image_id, annotations in by_image.items() if _has_valid_box(annotations))
    if seed:
        random.Random(seed).shuffle(image_ids)
    needed = {category["id"]: shots for category in ground_truth["categories"]}
    chosen = []
    for image_id in image_ids:
        present = {annotation["category_id"] for annotation in by_image[image_id]}
        if any(needed.get(category, 0) > 0 for category in present):
            chosen.append(image_id)
            for category in present:
                needed[category] = needed.get(category, 0) - 1
    chosen_set = set(chosen)
    subset = {key: value for key, value in ground_truth.items() if key not in ("images", "annotations")}
    subset["images"] = [image for image in ground_truth["images"] if image["id"] in chosen_set]
    subset["annotations"] = [annotation for annotation in ground_truth["annotations"]
                             if annotation["image_id"] in chosen_set]
    return subset


def write_few_shot_splits(annotation_file, output_dir, shots=FEW_SHOT_COUNTS, seeds=FEW_SHOT_SEEDS,
                          prefix: str = "fewshot_train") -> list[Path]:
    """`{prefix}_shot{k}_seed{s}.json` for every k and seed, as the original names its prepared splits. Existing
    files are not overwritten (a ValueError names the first)."""
    from .files import check_detection_ground_truth, read_json

    ground_truth = check_detection_ground_truth(read_json(annotation_file, "annotation"), annotation_file)
    output_dir = Path(output_dir)
    targets = [(k, s, output_dir / f"{prefix}_shot{k}_seed{s}.json") for k in shots for s in seeds]
    for _, _, path in targets:
        if path.exists():
            raise ValueError(f"{path} already exists; choose another output folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    for k, s, path in targets:
        path.write_text(json.dumps(sample_few_shot(ground_truth, k, s)))
    return [path for _, _, path in targets]


__all__ = ["FEW_SHOT_COUNTS", "FEW_SHOT_SEEDS", "OdinwDataset", "detection_prompt", "find_odinw_dataset",
           "odinw_suite",
           "sample_few_shot", "write_few_shot_splits"]
