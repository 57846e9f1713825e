"""LVIS box AP with the LVIS API's rules, standard and Fixed AP, for current numpy and without opencv.

Standard AP (the LVIS API, `lvis` 0.5.3): at most 300 detections per image; detections of a category are only
scored on images where the category is annotated as present (a ground-truth box) or absent (`neg_category_ids`);
unmatched detections of a category listed in an image's `not_exhaustive_category_ids` are ignored; AP is averaged
over categories that have ground truth, and APr / APc / APf over the categories whose `frequency` is "r", "c", "f".

Fixed AP (Dave et al. 2021, as GLIP and MDETR evaluate LVIS): the top 10,000 detections of each category over the
whole dataset, with no per-image cap, then the same rules.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

LVIS_METRIC_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
# (name, min area, max area), inclusive bounds as the LVIS API compares them.
AREA_RANGES = (("all", 0.0, 1e10), ("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, 1e10))
FREQUENCIES = ("r", "c", "f")
STANDARD_MAX_DETECTIONS = 300
FIXED_AP_DETECTIONS_PER_CATEGORY = 10_000


def keep_top_per_image(results: list[dict], limit: int) -> list[dict]:
    """At most `limit` detections per image, the best scores (stable for ties, as the LVIS API)."""
    by_image = defaultdict(list)
    for result in results:
        by_image[result["image_id"]].append(result)
    kept = []
    for detections in by_image.values():
        if len(detections) > limit:
            detections = sorted(detections, key=lambda d: d["score"], reverse=True)[:limit]
        kept += detections
    return kept


def keep_top_per_category(results: list[dict], limit: int) -> list[dict]:
    """At most `limit` detections per category over the dataset (Fixed AP's budget)."""
    by_category = defaultdict(list)
    for result in results:
        by_category[result["category_id"]].append(result)
    kept = []
    for detections in by_category.values():
        kept += sorted(detections, key=lambda d: d["score"], reverse=True)[:limit]
    return kept


def _box_iou_xywh(detections: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """(D, G) IoU of [x, y, w, h] boxes (continuous coordinates, as pycocotools' `iou`)."""
    det_x2, det_y2 = detections[:, 0] + detections[:, 2], detections[:, 1] + detections[:, 3]
    gt_x2, gt_y2 = truths[:, 0] + truths[:, 2], truths[:, 1] + truths[:, 3]
    width = np.minimum(det_x2[:, None], gt_x2[None]) - np.maximum(detections[:, None, 0], truths[None, :, 0])
    height = np.minimum(det_y2[:, None], gt_y2[None]) - np.maximum(detections[:, None, 1], truths[None, :, 1])
    intersection = width.clip(min=0) * height.clip(min=0)
    union = (detections[:, 2] * detections[:, 3])[:, None] + (truths[:, 2] * truths[:, 3])[None] - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1), 0.0)


def _match(ious: np.ndarray, truth_ignored: np.ndarray, threshold: float):
    """Greedy matching of score-sorted detections to truths (non-ignored truths first), as COCO / LVIS do.

    Returns per detection the matched truth index (-1 none) and whether that truth is ignored.
    """
    num_detections, num_truths = ious.shape
    truth_taken = np.zeros(num_truths, dtype=bool)
    matches = np.full(num_detections, -1)
    for detection in range(num_detections):
        best_iou, best = min(threshold, 1 - 1e-10), -1
        for truth in range(num_truths):
            if truth_taken[truth]:
                continue
            if best > -1 and not truth_ignored[best] and truth_ignored[truth]:
                break  # truths are sorted non-ignored first: a real match beats any ignored one
            if ious[detection, truth] < best_iou:
                continue
            best_iou, best = ious[detection, truth], truth
        if best > -1:
            truth_taken[best] = True
            matches[detection] = best
    return matches


class LvisEvaluator:
    """LVIS box AP of result entries (`image_id`, `category_id`, `bbox` xywh, `score`) against an LVIS ground truth.

    Args:
        ground_truth: the LVIS annotation dict (`images` with `neg_category_ids` and `not_exhaustive_category_ids`,
            `annotations`, `categories` with `frequency`).
        fixed_ap: Fixed AP (top `detections_per_category` per category, no per-image cap) instead of standard AP.
    """

    def __init__(self, ground_truth: dict, fixed_ap: bool = False, max_detections: int = STANDARD_MAX_DETECTIONS,
                 detections_per_category: int = FIXED_AP_DETECTIONS_PER_CATEGORY):
        self.ground_truth = ground_truth
        self.fixed_ap = fixed_ap
        self.max_detections = max_detections
        self.detections_per_category = detections_per_category
        self.image_ids = sorted(image["id"] for image in ground_truth["images"])
        self.categories = sorted(ground_truth["categories"], key=lambda category: category["id"])
        self.negative = {image["id"]: set(image.get("neg_category_ids", [])) for image in ground_truth["images"]}
        self.not_exhaustive = {image["id"]: set(image.get("not_exhaustive_category_ids", []))
                               for image in ground_truth["images"]}
        self.truths = defaultdict(list)
        for annotation in ground_truth["annotations"]:
            self.truths[annotation["image_id"], annotation["category_id"]].append(annotation)

    def select(self, results: list[dict]) -> list[dict]:
        """The detections the protocol scores (the per-image or per-category budget)."""
        if self.fixed_ap:
            return keep_top_per_category(results, self.detections_per_category)
        return keep_top_per_image(results, self.max_detections)

    def _federated_detections(self, results: list[dict]):
        """Detections grouped by (image, category), kept only where the category's presence is known."""
        present = defaultdict(set)
        for image_id, category_id in self.truths:
            present[image_id].add(category_id)
        detections = defaultdict(list)
        for index, result in enumerate(results):
            image_id, category_id = result["image_id"], result["category_id"]
            if category_id in present[image_id] or category_id in self.negative.get(image_id, ()):
                detections[image_id, category_id].append((index, result))
        return detections

    def _evaluate_pair(self, truths, detections, not_exhaustive: bool):
        """Per area range: (scores, order keys, true-positive flags, ignored flags) per IoU threshold, and #truths."""
        detections = sorted(detections, key=lambda item: -item[1]["score"])  # stable, as mergesort
        detection_boxes = np.array([d["bbox"] for _, d in detections], dtype=np.float64).reshape(-1, 4)
        truth_boxes = np.array([t["bbox"] for t in truths], dtype=np.float64).reshape(-1, 4)
        ious = _box_iou_xywh(detection_boxes, truth_boxes)
        detection_areas = detection_boxes[:, 2] * detection_boxes[:, 3]
        per_area = []
        for _, low, high in AREA_RANGES:
            truth_ignored = np.array([bool(t.get("ignore", 0)) or not low <= t["area"] <= high for t in truths],
                                     dtype=bool)
            order = np.argsort(truth_ignored, kind="mergesort")
            outside = (detection_areas < low) | (detection_areas > high) | not_exhaustive
            matched = np.zeros((len(IOU_THRESHOLDS), len(detections)), dtype=bool)
            ignored = np.zeros_like(matched)
            for row, threshold in enumerate(IOU_THRESHOLDS):
                if not truths:
                    break
                matches = _match(ious[:, order], truth_ignored[order], threshold)
                matched[row] = matches >= 0
                ignored[row] = np.where(matches >= 0, truth_ignored[order][np.maximum(matches, 0)], False)
            ignored |= ~matched & outside[None]
            per_area.append((matched, ignored, int((~truth_ignored).sum())))
        scores = np.array([d["score"] for _, d in detections], dtype=np.float64)
        return scores, per_area

    def _precision_recall(self, results):
        detections = self._federated_detections(results)
        num_categories = len(self.categories)
        precision = -np.ones((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), num_categories, len(AREA_RANGES)))
        recall = -np.ones((len(IOU_THRESHOLDS), num_categories, len(AREA_RANGES)))
        for category_index, category in enumerate(self.categories):
            category_id = category["id"]
            pairs = []
            for image_id in self.image_ids:
                truths = self.truths.get((image_id, category_id), [])
                found = detections.get((image_id, category_id), [])
                if truths or found:
                    pairs.append(self._evaluate_pair(truths, found, category_id in self.not_exhaustive[image_id]))
            if not pairs:
                continue
            scores = np.concatenate([pair[0] for pair in pairs])
            order = np.argsort(-scores, kind="mergesort")
            for area_index in range(len(AREA_RANGES)):
                num_truths = sum(pair[1][area_index][2] for pair in pairs)
                if num_truths == 0:
                    continue
                matched = np.concatenate([pair[1][area_index][0] for pair in pairs], axis=1)[:, order]
                ignored = np.concatenate([pair[1][area_index][1] for pair in pairs], axis=1)[:, order]
                true_positives = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
                false_positives = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
                for row in range(len(IOU_THRESHOLDS)):
                    precision[row, :, category_index, area_index], recall[row, category_index, area_index] = (
                        _interpolated_precision(true_positives[row], false_positives[row], num_truths))
        return precision, recall

    def compute(self, results: list[dict]) -> dict[str, float]:
        """The metrics of `LVIS_METRIC_NAMES` (-1 where no category qualifies, as the LVIS API)."""
        precision, _ = self._precision_recall(self.select(results))
        frequency_of = np.array([category.get("frequency", "") for category in self.categories])
        metrics = {
            "AP": _mean_valid(precision[..., 0]),
            "AP50": _mean_valid(precision[0, ..., 0]),
            "AP75": _mean_valid(precision[5, ..., 0]),
            "APs": _mean_valid(precision[..., 1]),
            "APm": _mean_valid(precision[..., 2]),
            "APl": _mean_valid(precision[..., 3]),
        }
        for frequency in FREQUENCIES:
            metrics[f"AP{frequency}"] = _mean_valid(precision[:, :, frequency_of == frequency, 0])
        return metrics


def _interpolated_precision(true_positives, false_positives, num_truths):
    """Precision at the 101 recall thresholds (monotone envelope) and the final recall, as the LVIS API."""
    count = len(true_positives)
    recall = true_positives / num_truths
    final_recall = recall[-1] if count else 0.0
    precision = true_positives / (true_positives + false_positives + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1] if count else precision
    at_recall = np.zeros(len(RECALL_THRESHOLDS))
    positions = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
    valid = positions < count
    # The API stops filling at the first threshold beyond the reached recall; later ones stay 0.
    first_invalid = np.argmin(valid) if not valid.all() else len(valid)
    at_recall[:first_invalid] = precision[positions[:first_invalid]]
    return at_recall, final_recall


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def lvis_evaluate(ground_truth: dict, results: list[dict], fixed_ap: bool = False) -> dict[str, float]:
    """Standard LVIS AP (300 detections per image) or Fixed AP (10,000 per category) of COCO-style results."""
    return LvisEvaluator(ground_truth, fixed_ap=fixed_ap).compute(results)


__all__ = ["LVIS_METRIC_NAMES", "LvisEvaluator", "keep_top_per_category", "keep_top_per_image", "lvis_evaluate"]
