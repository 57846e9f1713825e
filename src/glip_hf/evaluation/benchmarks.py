"""Benchmark evaluation entry points: inference plus scoring (`evaluate_detection`, `evaluate_odinw`,
`evaluate_flickr`) and scoring of predictions already made (`score_predictions`, `score_detections`).

Per-benchmark settings follow the original's evaluation commands (microsoft/GLIP README and configs): COCO and
ODinW keep 100 detections per image and one prompt with every class; LVIS runs prompts of 40 class names
(TEST.CHUNKED_EVALUATION 40) that share one vision pass and keeps 300 detections per chunk, as the original's
per-chunk queries do (standard AP then keeps 300 per image, Fixed AP 10,000 per category); Flickr30k grounds
each sentence's phrases, one result per sentence. Test sizes come from the model folder (the converter writes
the YAML's 800 / 1333, which every benchmark config uses).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

from .files import check_detection_ground_truth, check_detection_results, coco_from_dict, read_json
from .flickr_eval import flickr_recall, load_flickr_split
from .lvis_eval import lvis_evaluate
from .odinw import detection_prompt, odinw_suite
from .runner import EvaluationItem, PromptSpec, class_names_in_order, fixed_size_chunks, run_items

BENCHMARKS = ("coco", "lvis", "odinw", "flickr30k")
SCORED_BENCHMARKS = ("coco", "lvis", "lvis-fixed", "flickr30k")
COCO_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


@dataclass(frozen=True)
class BenchmarkSettings:
    # The post-processor's cut; with chunks, each chunk gets its own (the original runs each as its own query).
    detections_per_image: int
    chunk_size: int | None
    # COCO-style evaluation in the original converts boxes to xywh with its +1 pixel width; LVIS's does not.
    inclusive_width: bool


SETTINGS = {
    "coco": BenchmarkSettings(detections_per_image=100, chunk_size=None, inclusive_width=True),
    "odinw": BenchmarkSettings(detections_per_image=100, chunk_size=None, inclusive_width=True),
    "lvis": BenchmarkSettings(detections_per_image=300, chunk_size=40, inclusive_width=False),
    "flickr30k": BenchmarkSettings(detections_per_image=100, chunk_size=None, inclusive_width=False),
}


def coco_metrics(ground_truth: dict, results: list[dict]) -> dict[str, float]:
    """COCO box AP (pycocotools) of result entries; -1 where a size class has no ground truth."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return dict.fromkeys(COCO_KEYS, 0.0)
    # pycocotools reads `iscrowd` and `area` of every annotation; files without them (LVIS-style) get the defaults.
    annotations = [{"iscrowd": 0, "area": a["bbox"][2] * a["bbox"][3], **a} for a in ground_truth["annotations"]]
    coco_gt = coco_from_dict({**ground_truth, "annotations": annotations})
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco_gt, coco_gt.loadRes([dict(entry) for entry in results]), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_KEYS, evaluator.stats)}


def _restrict(ground_truth: dict, image_ids) -> dict:
    """The ground truth of `image_ids` only (a fine-tuning run may evaluate a subset)."""
    if image_ids is None:
        return ground_truth
    keep = set(image_ids)
    restricted = dict(ground_truth)
    restricted["images"] = [image for image in ground_truth["images"] if image["id"] in keep]
    restricted["annotations"] = [entry for entry in ground_truth["annotations"] if entry["image_id"] in keep]
    return restricted


def score_detections(benchmark: str, ground_truth, results: list[dict], image_ids=None,
                     source="predictions") -> dict[str, float]:
    """COCO, LVIS standard or LVIS Fixed AP ("coco", "lvis", "lvis-fixed") of COCO/LVIS result entries.

    `ground_truth` is the annotation file or its parsed dict; with `image_ids`, only those images are scored.
    """
    if benchmark not in ("coco", "lvis", "lvis-fixed"):
        raise ValueError(f"detection benchmark must be coco, lvis or lvis-fixed, got {benchmark!r}")
    lvis = benchmark.startswith("lvis")
    name = ground_truth if isinstance(ground_truth, (str, Path)) else "ground truth"
    truth = read_json(ground_truth, "ground truth") if isinstance(ground_truth, (str, Path)) else ground_truth
    truth = _restrict(check_detection_ground_truth(truth, name, lvis=lvis), image_ids)
    check_detection_results(results, truth, source)
    if lvis:
        return lvis_evaluate(truth, results, fixed_ap=benchmark == "lvis-fixed")
    return coco_metrics(truth, results)


def score_predictions(benchmark: str, ground_truth, predictions, flickr_protocol: str = "any",
                      flickr_split: str = "test") -> dict[str, float]:
    """Metrics of a predictions file against its ground truth.

    coco / lvis / lvis-fixed: `ground_truth` is the annotation JSON and `predictions` a COCO/LVIS result JSON.
    flickr30k: `ground_truth` is the Flickr30k Entities folder (Annotations/, Sentences/, split lists) and
    `predictions` MDETR's per-sentence JSON.
    """
    if benchmark not in SCORED_BENCHMARKS:
        raise ValueError(f"benchmark must be one of {SCORED_BENCHMARKS}, got {benchmark!r}")
    results = read_json(predictions, "predictions")
    if benchmark == "flickr30k":
        if not isinstance(results, list):
            raise ValueError(f"{predictions}: Flickr30k predictions are a JSON list of per-sentence entries")
        samples = load_flickr_split(ground_truth, flickr_split, flickr_protocol)
        return flickr_recall(samples, results, source=predictions)
    return score_detections(benchmark, ground_truth, results, source=predictions)


def _image_path(image: dict, image_dir: Path, source) -> Path:
    """An annotation image's file: `file_name`, or (LVIS v1) the last two parts of `coco_url` (split/file)."""
    if image.get("file_name"):
        return image_dir / image["file_name"]
    if image.get("coco_url"):
        return image_dir / Path(*image["coco_url"].split("/")[-2:])
    raise ValueError(f"{source}: image {image.get('id')!r} has neither 'file_name' nor 'coco_url'")


def _to_results(outputs, category_ids: list[int], inclusive_width: bool) -> list[dict]:
    extra = 1.0 if inclusive_width else 0.0
    results = []
    for image_id, groups in outputs:
        for group in groups:
            for score, label, (x1, y1, x2, y2) in zip(group["scores"], group["labels"], group["boxes"]):
                results.append({"image_id": image_id, "category_id": category_ids[label],
                                "bbox": [x1, y1, x2 - x1 + extra, y2 - y1 + extra], "score": score})
    return results


def _configure(processor, settings: BenchmarkSettings):
    processor.detections_per_image = settings.detections_per_image
    return processor


def detect_dataset(model, processor, ground_truth: dict, image_dir, source, benchmark: str = "coco",
                   class_names=None, phrases=None, category_ids=None, **run_options) -> list[dict]:
    """COCO/LVIS result entries of the model on every image of a detection ground truth.

    The prompt is the ground truth's categories in id order, or `class_names` (a list of names, or a caption
    whose `phrases` spans are the categories) labelled with `category_ids`.
    """
    settings = SETTINGS[benchmark]
    _configure(processor, settings)
    if class_names is None:
        class_names, category_ids = class_names_in_order(ground_truth["categories"])
    if phrases is not None:
        prompts = [PromptSpec(class_names, phrases)]
    else:
        prompts = fixed_size_chunks(class_names, settings.chunk_size)
    image_dir = Path(image_dir)
    items = [EvaluationItem(image["id"], _image_path(image, image_dir, source), prompts,
                            separate_prompts=settings.chunk_size is not None)
             for image in sorted(ground_truth["images"], key=lambda image: image["id"])]
    outputs = run_items(model, processor, items, description=benchmark, **run_options)
    return _to_results(outputs, category_ids, settings.inclusive_width)


def evaluate_detection(model, processor, annotations, images, benchmark: str = "coco", fixed_ap: bool = True,
                       **run_options):
    """(metrics, result entries) for COCO or LVIS. LVIS reports Fixed AP (as GLIP's paper evaluates it) with the
    standard AP under "standard"."""
    truth = check_detection_ground_truth(read_json(annotations, "annotation"), annotations,
                                         lvis=benchmark == "lvis")
    results = detect_dataset(model, processor, truth, images, annotations, benchmark, **run_options)
    if benchmark == "lvis":
        metrics = lvis_evaluate(truth, results, fixed_ap=True)
        metrics["standard"] = lvis_evaluate(truth, results)
        return metrics, results
    return coco_metrics(truth, results), results


def evaluate_odinw(model, processor, root, suite: str = "odinw_13", datasets=None, **run_options):
    """(metrics, result entries per dataset): per-dataset COCO metrics, the average AP over the datasets evaluated
    and the datasets that are missing (reported, not fatal)."""
    root = Path(root)
    chosen = odinw_suite(suite)
    if datasets:
        names = {dataset.name for dataset in chosen}
        unknown = sorted(set(datasets) - names)
        if unknown:
            raise ValueError(f"unknown {suite} dataset(s) {unknown}; known: {sorted(names)}")
        chosen = [dataset for dataset in chosen if dataset.name in set(datasets)]
    per_dataset, missing, predictions = {}, {}, {}
    for dataset in chosen:
        annotation_file = root / dataset.test["annotations"]
        if not annotation_file.is_file():
            missing[dataset.name] = f"{annotation_file} does not exist"
            continue
        truth = check_detection_ground_truth(read_json(annotation_file, "annotation"), annotation_file)
        text, phrases, ids = detection_prompt(dataset, truth, processor.separator)
        results = detect_dataset(model, processor, truth, root / dataset.test["images"], annotation_file, "odinw",
                                 class_names=text, phrases=phrases, category_ids=ids, **run_options)
        per_dataset[dataset.name] = coco_metrics(truth, results)
        predictions[dataset.name] = results
    average = sum(metrics["AP"] for metrics in per_dataset.values()) / len(per_dataset) if per_dataset else None
    metrics = {"suite": suite, "AP": average, "evaluated": len(per_dataset), "datasets": per_dataset,
               "missing": missing}
    return metrics, predictions


def evaluate_flickr(model, processor, root, images, split: str = "test", protocol: str = "any", **run_options):
    """(metrics, MDETR-format predictions) of phrase grounding on a Flickr30k Entities split."""
    _configure(processor, SETTINGS["flickr30k"])
    samples = load_flickr_split(root, split, protocol)
    images = Path(images)
    by_image: dict[str, list] = {}
    for sample in samples:
        by_image.setdefault(sample.image_id, []).append(sample)
    items = [EvaluationItem(image_id, images / f"{image_id}.jpg",
                            [PromptSpec(s.caption, [(p.start, p.end) for p in s.phrases]) for s in sentences],
                            separate_prompts=True)
             for image_id, sentences in by_image.items()]
    outputs = run_items(model, processor, items, description="flickr30k", **run_options)
    predictions = []
    for image_id, groups in outputs:
        for sample, group in zip(by_image[image_id], groups):
            ranked = [[] for _ in sample.phrases]
            for label, box in zip(group["labels"], group["boxes"]):  # best first
                ranked[label].append(box)
            predictions.append({"image_id": image_id, "sentence_id": sample.sentence_id, "boxes": ranked})
    return flickr_recall(samples, predictions), predictions


__all__ = [
    "BENCHMARKS",
    "SCORED_BENCHMARKS",
    "SETTINGS",
    "coco_metrics",
    "detect_dataset",
    "evaluate_detection",
    "evaluate_flickr",
    "evaluate_odinw",
    "score_detections",
    "score_predictions",
]
