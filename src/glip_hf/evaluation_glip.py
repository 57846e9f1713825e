"""COCO-style evaluation of GLIP detections with pycocotools."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

from .box_ops_glip import PIXEL_INCLUSIVE

COCO_METRIC_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
# Columns of the fixed-size detection arrays the trainer gathers: box (4), score, label, valid.
DETECTION_COLUMNS = 7


def pack_detections(results: list[dict], max_detections: int) -> torch.Tensor:
    """Per-image detection dicts -> (N, max_detections, 7) [x1, y1, x2, y2, score, label, valid], best first.

    Fixed-size so that processes can gather them; memory is bounded by max_detections per image.
    """
    packed = torch.zeros(len(results), max_detections, DETECTION_COLUMNS)
    for row, result in enumerate(results):
        order = torch.argsort(result["scores"], descending=True)[:max_detections]
        count = len(order)
        packed[row, :count, :4] = result["boxes"][order].float().cpu()
        packed[row, :count, 4] = result["scores"][order].float().cpu()
        packed[row, :count, 5] = result["labels"][order].float().cpu()
        packed[row, :count, 6] = 1.0
    return packed


def packed_to_coco_results(packed, image_ids, label_to_category, inclusive_width: bool = True) -> list[dict]:
    """COCO result entries; boxes go back to [x, y, w, h] with the original's +1 width (inclusive pixels) for COCO
    evaluation, without it for LVIS (`inclusive_width=False`, as the original's LVIS evaluator)."""
    extra = PIXEL_INCLUSIVE if inclusive_width else 0
    entries = []
    for detections, image_id in zip(np.asarray(packed), np.asarray(image_ids).reshape(-1)):
        for x1, y1, x2, y2, score, label, valid in detections:
            if valid < 0.5:
                continue
            entries.append({
                "image_id": int(image_id),
                "category_id": int(label_to_category[int(label)]),
                "bbox": [float(x1), float(y1), float(x2 - x1 + extra), float(y2 - y1 + extra)],
                "score": float(score),
            })
    return entries


def coco_evaluate(coco_gt, results: list[dict], image_ids=None) -> dict[str, float]:
    """AP/AR metrics of `results` (COCO result entries) against a pycocotools `COCO` ground truth."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return dict.fromkeys(COCO_METRIC_NAMES, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted({int(i) for i in np.asarray(image_ids).reshape(-1)})
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # pycocotools reports -1 where no ground truth exists (e.g. no small objects); kept as is.
    return {name: float(value) for name, value in zip(COCO_METRIC_NAMES, evaluator.stats)}


def load_coco(annotation_file):
    """A pycocotools `COCO` object, quietly."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(annotation_file))


__all__ = ["coco_evaluate", "load_coco", "pack_detections", "packed_to_coco_results"]
