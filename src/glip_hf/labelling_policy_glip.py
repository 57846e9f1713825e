"""Which of a teacher's detections become pseudo-labels.

Defaults and their sources:

- `threshold` 0.5 on the final score sqrt(phrase score x centerness): chosen here (a box the teacher is more sure of
  than not); the GLIP paper's text does not give its value. `class_thresholds` overrides it per class name.
- class-aware NMS at IoU 0.6 over all chunks of a long class list: the original ATSS post-processor's `NMS_TH`
  (done by `GlipProcessor.post_process_grounded_object_detection`, whose labels are global class indices, so a box
  found in two chunks is suppressed across them).
- `max_boxes_per_image` 100: the original's `TEST.DETECTIONS_PER_IMG`.
- `class_agnostic_nms` None (off), as the original's post-processor; an IoU (e.g. 0.8) also suppresses overlapping
  boxes of different classes, for vocabularies with near-synonyms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .postprocessing_glip import batched_nms_inclusive


@dataclass
class LabelPolicy:
    threshold: float = 0.5
    class_thresholds: dict[str, float] = field(default_factory=dict)
    nms_threshold: float = 0.6
    max_boxes_per_image: int = 100
    class_agnostic_nms: float | None = None

    def __post_init__(self):
        for name, value in [("threshold", self.threshold), *self.class_thresholds.items()]:
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"Score threshold {name!r} must lie in [0, 1], got {value!r}")
        if not 0.0 < self.nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold must lie in (0, 1], got {self.nms_threshold!r}")
        if self.class_agnostic_nms is not None and not 0.0 < self.class_agnostic_nms <= 1.0:
            raise ValueError(f"class_agnostic_nms must lie in (0, 1] or be None, got {self.class_agnostic_nms!r}")
        if self.max_boxes_per_image < 1:
            raise ValueError(f"max_boxes_per_image must be >= 1, got {self.max_boxes_per_image!r}")

    def lowest_threshold(self) -> float:
        return min([self.threshold, *self.class_thresholds.values()])

    def check_classes(self, phrases: list[str] | None) -> None:
        if phrases is None:
            if self.class_thresholds:
                raise ValueError("Per-class thresholds need class names (--classes), not captions")
            return
        unknown = sorted(set(self.class_thresholds) - set(phrases))
        if unknown:
            raise ValueError(f"Thresholds given for {unknown}, which are not among the classes {phrases}")


def apply_policy(result: dict, policy: LabelPolicy, phrases: list[str]) -> dict:
    """Filter one image's detections (`scores`, `labels` indexing `phrases`, `boxes`): per-class threshold, optional
    class-agnostic NMS, then the best `max_boxes_per_image` by score."""
    scores, labels, boxes = result["scores"], result["labels"], result["boxes"]
    minimum = torch.tensor([policy.class_thresholds.get(phrase, policy.threshold) for phrase in phrases],
                           dtype=scores.dtype, device=scores.device)
    keep = scores > minimum[labels] if len(phrases) else scores > policy.threshold
    scores, labels, boxes = scores[keep], labels[keep], boxes[keep]
    if policy.class_agnostic_nms is not None and len(scores):
        kept = batched_nms_inclusive(boxes, scores, torch.zeros_like(labels), policy.class_agnostic_nms)
        scores, labels, boxes = scores[kept], labels[kept], boxes[kept]
    order = scores.argsort(descending=True, stable=True)[: policy.max_boxes_per_image]
    return {"scores": scores[order], "labels": labels[order], "boxes": boxes[order]}


__all__ = ["LabelPolicy", "apply_policy"]
