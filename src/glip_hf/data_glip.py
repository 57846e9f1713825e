"""Grounding training data for GLIP: a `datasets` schema, streaming converters, the train augmentation, a collator.

Every source (COCO-style detection, MDETR grounding JSON, ODVG jsonl) is converted into one schema,
`GROUNDING_FEATURES`, one row per image-caption pair:

    ============== ===================================== ==============================================================
    column         type                                  meaning
    ============== ===================================== ==============================================================
    image          datasets.Image                        the image (stored as a path; decoded to PIL on access)
    image_id       int64                                 COCO / MDETR image id; for ODVG the line number in the jsonl
    caption        string                                the text prompt the boxes are grounded in
    boxes          list of [x1, y1, x2, y2] float32      pixels of the original image, inclusive pixel indices as in
                                                         maskrcnn_benchmark (COCO [x, y, w, h] -> [x, y, x+w-1, y+h-1]),
                                                         clamped to [0, W-1] x [0, H-1]; boxes left with x2 <= x1 or
                                                         y2 <= y1 are dropped, as `ConvertCocoPolysToMask` does
    spans          per box, list of [start, end)         character spans of the box's phrase in `caption`
    category_ids   per box int64                         the dataset's category id (detection data); -1 (grounding)
    ============== ===================================== ==============================================================

Detection captions follow the original's `convert_object_detection_to_grounding_optimized_for_od` (the O365
pre-training path): the image's classes plus randomly sampled negative classes, shuffled, joined with ". ", kept under
the token limit. Randomness comes from a per-image `random.Random` derived from `seed` and the image id, so a
conversion is reproducible and independent of iteration order or sharding; vary `seed` per epoch for fresh negatives.

`GlipTrainTransform` is the original's train transform (random shortest edge, resize, horizontal flip) on PIL images
and boxes; `GlipDataCollator` reads rows, applies it, and has `GlipProcessor` build the model's inputs and `labels`.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import random
from collections import Counter, defaultdict

import numpy as np
import torch
from PIL import Image

from .box_ops_glip import PIXEL_INCLUSIVE
from .image_processing_glip import get_resize_output_size, to_rgb_pil_image
from .processing_glip import (
    DETECTION_SEPARATOR,
    build_detection_prompt,
    clean_class_name,
    find_phrase_spans,
    load_tokenizer,
    resize_boxes,
)

try:
    import datasets
    from datasets import Features, Value
    from datasets import Image as ImageFeature
except ImportError as error:  # pragma: no cover - the module is for training, an optional extra
    raise ImportError("glip_hf.data_glip needs `datasets`: pip install 'glip-hf[train]'") from error
try:
    from datasets import List as _List  # datasets >= 4
except ImportError:  # pragma: no cover
    from datasets import Sequence as _List

GROUNDING_FEATURES = Features({
    "image": ImageFeature(),
    "image_id": Value("int64"),
    "caption": Value("string"),
    "boxes": _List(_List(Value("float32"), length=4)),
    "spans": _List(_List(_List(Value("int64"), length=2))),
    "category_ids": _List(Value("int64")),
})

logger = logging.getLogger(__name__)


# ----- boxes -------------------------------------------------------------------------------------------------------

def clip_boxes_inclusive(boxes, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clamp xyxy boxes to [0, W-1] x [0, H-1]; return them (float32) and the mask of non-empty ones.

    As `BoxList.clip_to_image(remove_empty=True)` and `ConvertCocoPolysToMask`: kept iff x2 > x1 and y2 > y1.
    """
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).clone()
    boxes[:, 0::2].clamp_(min=0, max=width - PIXEL_INCLUSIVE)
    boxes[:, 1::2].clamp_(min=0, max=height - PIXEL_INCLUSIVE)
    keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
    return boxes, keep


def xywh_to_inclusive_xyxy(boxes) -> torch.Tensor:
    """COCO [x, y, w, h] -> float32 [x, y, x + w - 1, y + h - 1]: the original's `boxes[:, 2:] += boxes[:, :2] - 1`."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).clone()
    boxes[:, 2:] += boxes[:, :2] - PIXEL_INCLUSIVE
    return boxes


def flip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """Horizontal flip, `BoxList.transpose(FLIP_LEFT_RIGHT)`: x1' = W - x2 - 1, x2' = W - x1 - 1."""
    return torch.stack((width - boxes[:, 2] - PIXEL_INCLUSIVE, boxes[:, 1], width - boxes[:, 0] - PIXEL_INCLUSIVE, boxes[:, 3]),
                       dim=-1)


# ----- detection captions ------------------------------------------------------------------------------------------

def coco_category_prompt(categories) -> tuple[str, list, list[int]]:
    """Fixed evaluation prompt: every class name in category-id order, "a. b. c" as `build_detection_prompt`.

    `categories` is COCO's "categories" list ({"id", "name"} dicts) or a {id: name} mapping. Returns the caption, the
    spans of each class (a list of one (start, end) each) and the category ids in prompt order.
    """
    names = _category_names(categories)
    ids = sorted(names)
    caption, spans = build_detection_prompt([names[i] for i in ids])
    return caption, spans, ids


def _category_names(categories) -> dict[int, str]:
    if isinstance(categories, dict):
        return {int(key): value for key, value in categories.items()}
    return {int(category["id"]): category["name"] for category in categories}


def make_token_counter(tokenizer=None, token_counter=None):
    """Callable text -> number of word pieces (no special tokens), as the original's `len(tokenizer.tokenize(...))`."""
    if token_counter is not None:
        return token_counter
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
    return lambda text: len(tokenizer.tokenize(text))


def sample_detection_caption(positive_ids, names: dict[int, str], rng: random.Random, count_tokens,
                             max_text_len: int = 256, num_negatives: int = 85, full_negative_prob: float = 0.5,
                             separator: str = DETECTION_SEPARATOR):
    """Caption of positive and sampled negative classes; returns (caption, {class id: (start, end)}, kept positives).

    The original's O365 recipe (RANDOM_SAMPLE_NEG 85, CONTROL_PROB (0, 0, 0.5, 0), SEPARATION_TOKENS ". ", max query
    length 256 of which 2 go to [CLS]/[SEP]). Positives beyond the token budget are dropped (the caller drops their
    boxes), negatives are drawn from all classes, and only as many are kept as still fit.
    """
    budget = max_text_len - 2
    cost = {}  # tokens of "name. ", the unit the original counts with

    def tokens(class_id):
        if class_id not in cost:
            cost[class_id] = count_tokens(clean_class_name(names[class_id]) + ". ")
        return cost[class_id]

    # check_for_positive_overflow: shuffled positives are kept while the running length stays within the budget.
    positives, length = sorted(set(positive_ids)), 0
    rng.shuffle(positives)
    kept = []
    for class_id in positives:
        length += tokens(class_id)
        if length > budget:
            break
        kept.append(class_id)
    # generate_control_options_given_probabilities: all negatives with full_negative_prob, else 1..full uniformly.
    full_negative = min(max(num_negatives, 0), len(names))
    if rng.random() < full_negative_prob:
        count = full_negative
    else:
        count = rng.randrange(max(1, full_negative)) + 1 if full_negative > 0 else 0
    kept_set = set(kept)
    negatives = [i for i in rng.sample(sorted(names), min(count, len(names))) if i not in kept_set]
    rng.shuffle(negatives)
    # The pre-screen: negatives are added while the remaining budget stays strictly positive.
    remaining, screened = budget - length, []
    for class_id in negatives:
        remaining -= tokens(class_id)
        if remaining <= 0:
            break
        screened.append(class_id)
    labels = screened + kept
    rng.shuffle(labels)
    caption, spans = build_detection_prompt([names[i] for i in labels], separator)
    return caption, {label: span[0] for label, span in zip(labels, spans)}, kept


def _image_rng(seed, image_id) -> random.Random:
    # A string seed is hashed deterministically (unlike tuples), so each image's draw depends on (seed, id) only.
    return random.Random(f"{seed}:{image_id}") if seed is not None else random.Random()


def _detection_example(image_path, image_id, boxes, category_ids, names, caption_options, seed, fixed_prompt):
    """One detection image as a schema row; `boxes` already inclusive, clamped and non-empty."""
    unknown = set(category_ids) - set(names)
    if unknown:
        raise ValueError(f"Image {image_id} has boxes of categories {sorted(unknown)} missing from the class list")
    if fixed_prompt:
        caption, spans, ids = coco_category_prompt(names)
        positions = {class_id: span[0] for class_id, span in zip(ids, spans)}
        kept = set(category_ids)
    else:
        caption, positions, kept = sample_detection_caption(category_ids, names, _image_rng(seed, image_id),
                                                            **caption_options)
        kept = set(kept)
    rows = [i for i, class_id in enumerate(category_ids) if class_id in kept]
    return {
        "image": image_path, "image_id": int(image_id), "caption": caption,
        "boxes": [boxes[i] for i in rows],
        "spans": [[list(positions[category_ids[i]])] for i in rows],
        "category_ids": [int(category_ids[i]) for i in rows],
    }


# ----- converters --------------------------------------------------------------------------------------------------

DROP_REASONS = {
    "not_finite": "boxes with NaN or infinite coordinates",
    "empty": "boxes of zero, negative or one-pixel width or height",
    "outside": "boxes entirely outside their image",
    "unknown_image": "annotations of an image id not in the file's images",
}


class BoxReport:
    """What a conversion dropped or clipped, and why: counts per reason with a few examples, logged at the end.

    `finish()` raises a `ValueError` when no usable box is left in the whole source (training on it would only
    teach "nothing here"), after logging the summary.
    """

    def __init__(self, source):
        self.source = str(source)
        self.counts = Counter()
        self.examples = defaultdict(list)
        self.kept = 0
        self.clipped = 0
        self.images = 0

    def drop(self, reason: str, where) -> None:
        self.counts[reason] += 1
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(where)

    def summary(self) -> str:
        lines = [f"{self.source}: {self.images} image(s), {self.kept} box(es) kept"
                 + (f", {self.clipped} of them clipped to their image" if self.clipped else "")]
        for reason, count in sorted(self.counts.items()):
            lines.append(f"  dropped {count} {DROP_REASONS[reason]} (e.g. {', '.join(map(str, self.examples[reason]))})")
        return "\n".join(lines)

    def finish(self) -> None:
        if self.counts or self.clipped:
            logger.warning(self.summary())
        if self.kept == 0:
            raise ValueError(f"No usable box is left in {self.source}:\n{self.summary()}")


def _group_annotations(annotations, image_ids, report: BoxReport) -> dict:
    by_image = defaultdict(list)
    for annotation in annotations:
        if annotation.get("image_id") not in image_ids:
            report.drop("unknown_image", f"annotation {annotation.get('id')} -> image {annotation.get('image_id')}")
        elif not annotation.get("iscrowd", 0):  # the original drops crowd boxes: `obj["iscrowd"] == 0`
            by_image[annotation["image_id"]].append(annotation)
    return by_image


def _image_size(entry, image_path, source) -> tuple[int, int]:
    """(width, height) of the file (PIL reads the header only); a declared size must agree with it."""
    try:
        with Image.open(image_path) as image:
            size = image.size
    except (OSError, ValueError) as error:
        raise ValueError(f"{source}: cannot read the image {image_path}: {error}") from None
    declared = entry.get("width"), entry.get("height")
    if any(value is not None for value in declared) and tuple(declared) != size:
        raise ValueError(f"{source}: {image_path} is declared {declared[0]}x{declared[1]} but the file is "
                         f"{size[0]}x{size[1]} pixels (boxes are read on the stored pixels, without EXIF rotation)")
    return size


def _checked_boxes(boxes: torch.Tensor, width, height, report: BoxReport, where) -> tuple[torch.Tensor, list]:
    """Clip inclusive xyxy boxes to the image as the original does, recording each dropped or clipped box."""
    clipped, keep = clip_boxes_inclusive(boxes, width, height)
    finite = torch.isfinite(boxes).all(1)
    sized = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    for index in (~keep).nonzero().flatten().tolist():
        reason = "not_finite" if not finite[index] else "empty" if not sized[index] else "outside"
        report.drop(reason, f"{where} box {index}")
    report.kept += int(keep.sum())
    report.clipped += int((keep & (clipped != boxes).any(1)).sum())
    return clipped, keep.tolist()


def _coco_boxes(annotations, width, height, report, where):
    boxes = xywh_to_inclusive_xyxy([a["bbox"] for a in annotations])
    boxes, keep = _checked_boxes(boxes, width, height, report, where)
    return boxes[torch.tensor(keep, dtype=torch.bool)].tolist(), [a for a, k in zip(annotations, keep) if k]


def _read_index(annotation_file) -> dict:
    try:
        with open(annotation_file) as file:
            index = json.load(file)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the annotation file {annotation_file}: {error}") from None
    if not isinstance(index, dict) or not isinstance(index.get("images"), list):
        raise TypeError(f"{annotation_file} is not a COCO-style index: it needs an 'images' list")
    return index


def coco_detection_examples(annotation_file, image_dir, *, tokenizer=None, max_text_len: int = 256,
                            token_counter=None, num_negatives: int = 85, full_negative_prob: float = 0.5,
                            seed: int | None = 0, fixed_prompt: bool = False, skip_empty: bool = False):
    """Yield schema rows from a COCO-format detection JSON, images in id order.

    Args:
        tokenizer / token_counter: counts word pieces for the token limit (default: the bundled BERT tokenizer).
        max_text_len: the caption, with [CLS] and [SEP], fits in this many tokens.
        num_negatives, full_negative_prob: the negative sampling (the original's RANDOM_SAMPLE_NEG and CONTROL_PROB[2]).
        seed: with the image id, seeds the caption of each image; None draws fresh randomness.
        fixed_prompt: use `coco_category_prompt` (all classes in id order) instead of sampling, as for evaluation.
        skip_empty: skip images left without boxes (the original's `has_valid_annotation`); by default they are kept
            and train on negatives only.
    """
    index = _read_index(annotation_file)
    names = _category_names(index.get("categories", []))
    report = BoxReport(annotation_file)
    by_image = _group_annotations(index.get("annotations", []), {e["id"] for e in index["images"]}, report)
    count = make_token_counter(tokenizer, token_counter) if not fixed_prompt else None
    options = dict(count_tokens=count, max_text_len=max_text_len, num_negatives=num_negatives,
                   full_negative_prob=full_negative_prob)
    for entry in sorted(index["images"], key=lambda e: e["id"]):
        path = os.path.join(image_dir, entry["file_name"])
        size = _image_size(entry, path, annotation_file)
        boxes, annotations = _coco_boxes(by_image.get(entry["id"], []), *size, report, f"image {entry['id']}")
        report.images += 1
        if skip_empty and not boxes:
            continue
        category_ids = [int(a["category_id"]) for a in annotations]
        yield _detection_example(path, entry["id"], boxes, category_ids, names, options, seed, fixed_prompt)
    report.finish()


def mdetr_examples(annotation_file, image_dir, *, skip_empty: bool = False):
    """Yield schema rows from an MDETR-style grounding JSON (Flickr30k entities, GoldG / mixed).

    Each `images` entry carries its `caption`; annotations carry `bbox` (xywh) and `tokens_positive` (character
    spans; the original prefers a `tokens` key when present). Category ids are -1: these are phrases, not classes.
    """
    index = _read_index(annotation_file)
    report = BoxReport(annotation_file)
    by_image = _group_annotations(index.get("annotations", []), {e["id"] for e in index["images"]}, report)
    for entry in sorted(index["images"], key=lambda e: e["id"]):
        path = os.path.join(image_dir, entry["file_name"])
        size = _image_size(entry, path, annotation_file)
        boxes, annotations = _coco_boxes(by_image.get(entry["id"], []), *size, report, f"image {entry['id']}")
        report.images += 1
        if skip_empty and not boxes:
            continue
        spans = [[list(span) for span in _annotation_spans(a)] for a in annotations]
        yield {"image": path, "image_id": int(entry["id"]), "caption": entry["caption"], "boxes": boxes,
               "spans": spans, "category_ids": [-1] * len(boxes)}
    report.finish()


def _annotation_spans(annotation):
    spans = annotation.get("tokens", annotation.get("tokens_positive"))
    if not spans:
        raise ValueError(f"Annotation {annotation.get('id')} has no `tokens_positive` spans")
    return spans


def _odvg_records(jsonl_file):
    with open(jsonl_file) as file:
        for line_number, line in enumerate(file):
            if line.strip():
                yield line_number, json.loads(line)


def _odvg_label_map(jsonl_file, label_map) -> dict[int, str]:
    """The class vocabulary: the given {label: name} map or JSON file, else one streaming pass over the records."""
    if isinstance(label_map, (str, os.PathLike)):
        with open(label_map) as file:
            label_map = json.load(file)
    if label_map is not None:
        return {int(key): value for key, value in label_map.items()}
    names = {}
    for _, record in _odvg_records(jsonl_file):
        for instance in record.get("detection", {}).get("instances", []):
            names.setdefault(int(instance["label"]), instance["category"])
    return names


def _odvg_boxes(xyxy, width, height, exclusive_boxes, report, where):
    boxes = torch.as_tensor(xyxy, dtype=torch.float32).reshape(-1, 4).clone()
    if exclusive_boxes:  # [x, y, x + w, y + h] (Open-GroundingDino's coco2odvg) -> the inclusive convention
        boxes[:, 2:] -= PIXEL_INCLUSIVE
    boxes, keep = _checked_boxes(boxes, width, height, report, where)
    return boxes[torch.tensor(keep, dtype=torch.bool)].tolist(), keep


def odvg_examples(jsonl_file, image_dir, *, label_map=None, exclusive_boxes: bool = True, tokenizer=None,
                  max_text_len: int = 256, token_counter=None, num_negatives: int = 85,
                  full_negative_prob: float = 0.5, seed: int | None = 0, skip_empty: bool = False):
    """Yield schema rows from an ODVG jsonl file (one record per line; `image_id` is the line number).

    Detection records get a sampled class caption as in `coco_detection_examples` (`label_map`: {label: name} or a
    JSON file of it, default the labels seen in the file). Grounding records keep their caption; a region without
    `tokens_positive` is grounded to every occurrence of its `phrase`. `exclusive_boxes`: the file's [x1, y1, x2, y2]
    end at x + w (Open-GroundingDino's `coco_to_xyxy`); False when they are already inclusive pixel indices.
    """
    names = None
    options = dict(max_text_len=max_text_len, num_negatives=num_negatives, full_negative_prob=full_negative_prob)
    report = BoxReport(jsonl_file)
    for line_number, record in _odvg_records(jsonl_file):
        path = os.path.join(image_dir, record["filename"])
        size = _image_size(record, path, f"{jsonl_file} line {line_number + 1}")
        where = f"line {line_number + 1}"
        report.images += 1
        if "detection" in record:
            if names is None:  # built on the first detection record: a pure grounding file needs no pass
                names = _odvg_label_map(jsonl_file, label_map)
                options["count_tokens"] = make_token_counter(tokenizer, token_counter)
            instances = record["detection"].get("instances", [])
            boxes, keep = _odvg_boxes([i["bbox"] for i in instances], *size, exclusive_boxes, report, where)
            labels = [int(i["label"]) for i, k in zip(instances, keep) if k]
            example = _detection_example(path, line_number, boxes, labels, names, options, seed, False)
        else:
            grounding = record["grounding"]
            caption, regions = grounding["caption"], grounding.get("regions", [])
            boxes, keep = _odvg_boxes([r["bbox"] for r in regions], *size, exclusive_boxes, report, where)
            spans = [[list(s) for s in (r.get("tokens_positive") or find_phrase_spans(caption, r["phrase"]))]
                     for r, k in zip(regions, keep) if k]
            example = {"image": path, "image_id": line_number, "caption": caption, "boxes": boxes, "spans": spans,
                       "category_ids": [-1] * len(boxes)}
        if skip_empty and not example["boxes"]:
            continue
        yield example
    report.finish()


def build_grounding_dataset(examples_fn, *, streaming: bool = False, cache_dir=None, **kwargs):
    """`Dataset` (cached Arrow) or, with `streaming`, `IterableDataset` of `examples_fn(**kwargs)` rows.

    The cache key covers the function, its arguments and the size / modification time of the files they name, so an
    edited annotation file is converted again.
    """
    generator = functools.partial(examples_fn, **kwargs)  # a partial: datasets would shard list-valued gen_kwargs
    if streaming:
        return datasets.IterableDataset.from_generator(generator, features=GROUNDING_FEATURES)
    stamps = [(str(v), os.stat(v).st_size, os.stat(v).st_mtime_ns) for v in kwargs.values()
              if isinstance(v, (str, os.PathLike)) and os.path.isfile(v)]
    fingerprint = datasets.fingerprint.Hasher.hash((examples_fn.__module__, examples_fn.__qualname__, kwargs, stamps))
    return datasets.Dataset.from_generator(generator, features=GROUNDING_FEATURES, cache_dir=cache_dir,
                                           fingerprint=fingerprint)


# ----- augmentation ------------------------------------------------------------------------------------------------

class GlipTrainTransform:
    """The original's train transform: `Resize(MULT_MIN_SIZE_TRAIN, MAX_SIZE_TRAIN)` then `RandomHorizontalFlip`.

    Takes a PIL image and (n, 4) inclusive xyxy boxes; returns the resized (maybe flipped) PIL image and float32 boxes.
    Normalisation and padding stay with `GlipImageProcessor` (`do_resize=False`). With `seed=None` draws come from
    the global `random` module, as in the original, which DataLoader workers reseed each; a seed gives a private
    generator (every worker copy would then repeat the same draws).
    """

    def __init__(self, min_sizes=(480, 560, 640, 720, 800), max_size: int | None = 1333, flip_prob: float = 0.5,
                 seed: int | None = None):
        self.min_sizes = tuple(min_sizes) if isinstance(min_sizes, (list, tuple)) else (min_sizes,)
        self.max_size = max_size
        self.flip_prob = flip_prob
        self.rng = random.Random(seed) if seed is not None else random

    def __call__(self, image: Image.Image, boxes):
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        width, height = image.size
        new_height, new_width = get_resize_output_size(height, width, self.rng.choice(self.min_sizes), self.max_size)
        if (new_width, new_height) != (width, height):
            image = image.resize((new_width, new_height), resample=Image.BILINEAR)
        boxes = resize_boxes(boxes, (width, height), (new_width, new_height))
        if self.flip_prob > 0 and self.rng.random() < self.flip_prob:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            boxes = flip_boxes(boxes, new_width)
        return image, boxes


# ----- collation ---------------------------------------------------------------------------------------------------

def load_example_image(image) -> Image.Image:
    """RGB PIL image of a row's `image`: PIL, a datasets {"bytes", "path"} dict (decode=False), a path, or an array.

    Files are read like the original's `pil_loader` (`convert("RGB")`, no EXIF rotation: boxes are annotated on the
    stored pixels). Note that `datasets` applies EXIF orientation when it decodes; cast the column with
    `Image(decode=False)` to read the stored pixels. The result is a fresh image without metadata, so the image
    processor cannot rotate it again.
    """
    if isinstance(image, dict):
        image = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
    if isinstance(image, (str, os.PathLike, io.BytesIO)):
        with Image.open(image) as opened:
            image = opened.convert("RGB")
    if isinstance(image, Image.Image):
        image = image.convert("RGB") if image.mode != "RGB" else image
        return Image.fromarray(np.asarray(image))
    return to_rgb_pil_image(image)


class GlipDataCollator:
    """Schema rows -> `GlipProcessor` batches: the model's inputs and `labels`, plus `image_ids`.

    Each row's image is read as stored (`load_example_image`) and its boxes clipped to it, empty ones dropped with
    their spans (the original's `clip_to_image(remove_empty=True)`). `train=True` then applies `transform` (default
    `GlipTrainTransform()`: random resize and flip) and the processor only normalises and pads; `train=False`
    leaves the test-time resize to the processor, which scales the boxes with the image.

    `class_names` (evaluation as COCO / ODinW do it): every image gets one prompt with these names (chunked when
    long), or one caption (a string) whose classes are the `phrases` spans (ODinW's caption prompts), instead of its
    row's caption, and no `labels`; rows then need only `image` and `image_id`.
    """

    def __init__(self, processor, transform=None, train: bool = True, class_names: list[str] | str | None = None,
                 phrases=None):
        self.processor = processor
        self.train = train
        self.transform = (transform if transform is not None else GlipTrainTransform()) if train else None
        self.class_names = class_names if class_names is None or isinstance(class_names, str) else list(class_names)
        self.phrases = phrases

    def _prepare(self, example) -> tuple[Image.Image, dict]:
        image = load_example_image(example["image"])
        if self.class_names is not None:
            return image, None
        boxes, keep = clip_boxes_inclusive(example["boxes"], *image.size)
        spans = [spans for spans, kept in zip(example["spans"], keep.tolist()) if kept]
        boxes = boxes[keep]
        if self.transform is not None:
            image, boxes = self.transform(image, boxes)
        return image, {"boxes": boxes, "spans": spans}

    def __call__(self, examples: list[dict]):
        images, annotations = zip(*(self._prepare(example) for example in examples))
        if self.class_names is not None:
            phrases = None if self.phrases is None else [self.phrases] * len(images)
            batch = self.processor(images=list(images), text=[self.class_names] * len(images), phrases=phrases)
        else:
            batch = self.processor(images=list(images), text=[example["caption"] for example in examples],
                                   annotations=list(annotations), do_resize=not self.train)
        batch["image_ids"] = torch.tensor([int(example["image_id"]) for example in examples], dtype=torch.long)
        return batch


__all__ = [
    "GROUNDING_FEATURES", "BoxReport", "GlipDataCollator", "GlipTrainTransform", "build_grounding_dataset", "clip_boxes_inclusive",
    "coco_category_prompt", "coco_detection_examples", "flip_boxes", "load_example_image", "make_token_counter",
    "mdetr_examples", "odvg_examples", "resize_boxes", "sample_detection_caption", "xywh_to_inclusive_xyxy",
]
