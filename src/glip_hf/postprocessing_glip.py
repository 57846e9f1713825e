"""Post-processing of GLIP outputs into detections, with the original ATSS post-processor's semantics.

Per level: phrase score = mean of the token sigmoids over the phrase's tokens; candidates are scores above the
candidate threshold (tested before centerness); the top `pre_nms_top_n` by score x sigmoid(centerness) are kept; their final
score is sqrt(score x sigmoid(centerness)). Boxes are clipped to the resized image, then class-aware NMS with the
+1 IoU convention runs over all levels, and the best `detections_per_image` are kept (ties at the cut kept, as the
original). Everything is batched on the device; the only Python loops run over the 5 levels and over images.
"""

from __future__ import annotations

import math
import numbers

import torch
from torchvision.ops import nms

from .box_ops_glip import PIXEL_INCLUSIVE, shift_inclusive

# The original ATSS post-processor's settings (MODEL.ATSS INFERENCE_TH, PRE_NMS_TOP_N, NMS_TH, DETECTIONS_PER_IMG):
# the defaults of `GlipProcessor`, whose saved settings the converter takes from the checkpoint's YAML.
DEFAULT_CANDIDATE_THRESHOLD = 0.05
DEFAULT_PRE_NMS_TOP_N = 1000
DEFAULT_NMS_THRESHOLD = 0.6
DEFAULT_DETECTIONS_PER_IMAGE = 100


def check_probability(value, name: str) -> float:
    """`value` if it is a finite number in [0, 1]; else a `TypeError` / `ValueError` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value}")
    return float(value)


def check_post_process_settings(candidate_threshold, pre_nms_top_n, nms_threshold, detections_per_image) -> None:
    """Thresholds in [0, 1] and positive counts; a `TypeError` / `ValueError` naming the setting otherwise."""
    check_probability(candidate_threshold, "candidate_threshold")
    check_probability(nms_threshold, "nms_threshold")
    if isinstance(pre_nms_top_n, bool) or not isinstance(pre_nms_top_n, numbers.Integral) or pre_nms_top_n < 1:
        raise ValueError(f"pre_nms_top_n must be a positive integer, got {pre_nms_top_n!r}")
    if (isinstance(detections_per_image, bool) or not isinstance(detections_per_image, numbers.Integral)
            or detections_per_image < 0):
        raise ValueError(f"detections_per_image must be a positive integer (0: no limit), got {detections_per_image!r}")


def check_target_sizes(target_sizes, num_images: int, device) -> torch.Tensor:
    """(N, 2) positive (height, width) per image; a single size or a flat [h, w] is not broadcast to the batch."""
    try:
        sizes = torch.as_tensor(target_sizes, device=device)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"target_sizes must be (N, 2) (height, width) numbers, got {target_sizes!r}") from error
    if sizes.dim() != 2 or sizes.shape != (num_images, 2):
        raise ValueError(
            f"target_sizes must hold one (height, width) per image, shape ({num_images}, 2); got shape "
            f"{tuple(sizes.shape)}: {target_sizes!r:.100}"
        )
    if sizes.dtype == torch.bool or sizes.is_complex():
        raise TypeError(f"target_sizes must be numbers, got {sizes.dtype}")
    if not (torch.isfinite(sizes.double()) & (sizes > 0)).all():
        raise ValueError(f"target_sizes must be positive and finite, got {sizes.tolist()}")
    return sizes


def check_finite_outputs(**tensors: torch.Tensor) -> None:
    """Model outputs with NaN or infinity (damaged weights, an overflow) would read as "nothing found"."""
    for name, tensor in tensors.items():
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(
                f"The model's {name} hold {bad} of {tensor.numel()} non-finite values (NaN or infinity): its weights "
                "may be damaged or the computation overflowed; no detections can be read from them"
            )


def phrase_scores(logits: torch.Tensor, token_maps: torch.Tensor) -> torch.Tensor:
    """Mean token probability of each phrase.

    Args:
        logits: (B, A, T) token logits.
        token_maps: (B, P, T) or (P, T), nonzero on the tokens of phrase p.
    Returns:
        (B, A, P) scores; a phrase without tokens scores 0.
    """
    if token_maps.dim() == 2:
        token_maps = token_maps.unsqueeze(0).expand(logits.shape[0], -1, -1)
    token_maps = token_maps[..., : logits.shape[-1]].to(logits.dtype).ne(0).to(logits.dtype)
    weights = token_maps / token_maps.sum(-1, keepdim=True).clamp(min=1)
    return logits.sigmoid() @ weights.transpose(1, 2)


def _top_candidates_per_level(scores, centerness, spatial_shapes, threshold, pre_nms_top_n):
    """Indices (B, K) into the flattened (A * P) scores, their gated scores (B, K) and validity (B, K)."""
    num_phrases = scores.shape[-1]
    gated = scores * centerness.sigmoid()[..., None]
    indices, values, valid = [], [], []
    start = 0
    for height, width in spatial_shapes.tolist():
        count = height * width
        level_scores = scores[:, start:start + count].flatten(1)
        level_gated = gated[:, start:start + count].flatten(1)
        is_candidate = level_scores > threshold
        # Non-candidates sort last; `valid` drops them afterwards, so the count per image may vary.
        ranked = torch.where(is_candidate, level_gated, torch.full_like(level_gated, -1.0))
        k = min(pre_nms_top_n, ranked.shape[1])
        top_values, top_index = ranked.topk(k, dim=1)
        indices.append(top_index + start * num_phrases)
        values.append(top_values)
        valid.append(top_values >= 0)
        start += count
    return torch.cat(indices, 1), torch.cat(values, 1), torch.cat(valid, 1)


def _clip_to_image(boxes: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
    """Clip (K, 4) boxes to [0, w-1] x [0, h-1] of their image's (h, w), given per box as (K, 2)."""
    max_x = (image_sizes[:, 1] - PIXEL_INCLUSIVE).to(boxes.dtype)
    max_y = (image_sizes[:, 0] - PIXEL_INCLUSIVE).to(boxes.dtype)
    return torch.stack(
        (
            boxes[..., 0].clamp(min=0).minimum(max_x), boxes[..., 1].clamp(min=0).minimum(max_y),
            boxes[..., 2].clamp(min=0).minimum(max_x), boxes[..., 3].clamp(min=0).minimum(max_y),
        ),
        dim=-1,
    )


def batched_nms_inclusive(boxes, scores, groups, iou_threshold: float) -> torch.Tensor:
    """Per-group NMS with the original's +1 IoU; indices of the kept boxes by decreasing score.

    Shifting x2, y2 by one pixel turns torchvision's IoU into the +1 IoU exactly. Few boxes: one NMS call with the
    groups moved apart (in float64, so the offsets cost no precision). Many boxes: one call per group after a
    single sort, which stays linear in the number of groups (torchvision's fallback scans every box per group).
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    shifted = shift_inclusive(boxes.double())
    if len(boxes) <= 1000:
        spread = shifted.max() + 1.0
        keep = nms(shifted + (groups.double() * spread)[:, None], scores.double(), iou_threshold)
        return keep
    order = torch.argsort(groups, stable=True)
    counts = torch.unique_consecutive(groups[order], return_counts=True)[1].tolist()
    kept = [members[nms(shifted[members], scores[members].double(), iou_threshold)] for members in order.split(counts)]
    keep = torch.cat(kept)
    return keep[scores[keep].argsort(descending=True, stable=True)]


def _keep_best(scores: torch.Tensor, limit: int) -> torch.Tensor:
    """Mask of the `limit` best scores, keeping every score tied with the last one (as the original's kthvalue)."""
    if limit <= 0 or scores.numel() <= limit:
        return torch.ones_like(scores, dtype=torch.bool)
    cutoff = scores.topk(limit).values[-1]
    return scores >= cutoff


def post_process_grounding(
    phrase_probabilities: torch.Tensor,
    centerness: torch.Tensor,
    pred_boxes: torch.Tensor,
    spatial_shapes: torch.Tensor,
    image_sizes: torch.Tensor,
    target_sizes: torch.Tensor | None = None,
    image_index: torch.Tensor | None = None,
    label_ids: torch.Tensor | None = None,
    candidate_threshold: float = DEFAULT_CANDIDATE_THRESHOLD,
    pre_nms_top_n: int = DEFAULT_PRE_NMS_TOP_N,
    nms_threshold: float = DEFAULT_NMS_THRESHOLD,
    detections_per_image: int = DEFAULT_DETECTIONS_PER_IMAGE,
) -> list[dict[str, torch.Tensor]]:
    """Turn per-anchor phrase scores into detections.

    Rows are prompts; several rows may belong to one image (a long class list split into chunks). Each row's
    candidates are selected per level as in the original, then NMS and the final cut run per image over all its rows.

    Args:
        phrase_probabilities: (R, A, P) from `phrase_scores`.
        centerness: (R, A) centerness logits.
        pred_boxes: (R, A, 4) decoded xyxy boxes in the padded input's pixels.
        spatial_shapes: (L, 2) (H_l, W_l) of the levels the anchors were concatenated from.
        image_sizes: (N, 2) (height, width) of each resized image before padding; boxes are clipped to it.
        target_sizes: (N, 2) (height, width) to rescale boxes to, usually the original image sizes; None keeps the
            resized image's frame.
        image_index: (R,) image of each row; default row r is image r.
        label_ids: (R, P) label of each row's phrase p within its image (-1 for padding); default p.
        candidate_threshold: threshold on the phrase score, before centerness, of the per-level candidates.
        pre_nms_top_n, nms_threshold, detections_per_image: candidates kept per level, NMS IoU, detections kept
            (0: all).
    Returns:
        Per image a dict with `scores` (N,), `labels` (N,) phrase indices, `boxes` (N, 4) absolute xyxy.
    """
    rows, _, num_phrases = phrase_probabilities.shape
    device = phrase_probabilities.device
    check_finite_outputs(scores=phrase_probabilities, centerness=centerness, boxes=pred_boxes)
    check_post_process_settings(candidate_threshold, pre_nms_top_n, nms_threshold, detections_per_image)
    image_sizes = torch.as_tensor(image_sizes, device=device)
    if target_sizes is not None:
        target_sizes = check_target_sizes(target_sizes, image_sizes.shape[0], device)
    if image_index is None:
        image_index = torch.arange(rows, device=device)
    if label_ids is None:
        label_ids = torch.arange(num_phrases, device=device).expand(rows, -1)
    flat_index, gated, valid = _top_candidates_per_level(
        phrase_probabilities, centerness, spatial_shapes, candidate_threshold, pre_nms_top_n
    )
    anchor_index, local_labels = flat_index // num_phrases, flat_index % num_phrases
    boxes = pred_boxes.gather(1, anchor_index[..., None].expand(-1, -1, 4))
    row_index = torch.arange(rows, device=device)[:, None].expand_as(local_labels)
    boxes, gated, row_index, local_labels = boxes[valid], gated[valid], row_index[valid], local_labels[valid]
    images, labels = image_index.to(device)[row_index], label_ids.to(device)[row_index, local_labels]
    boxes = _clip_to_image(boxes, image_sizes[images])
    scores = gated.sqrt()

    groups = images * (int(label_ids.max()) + 1) + labels
    keep = batched_nms_inclusive(boxes, scores, groups, nms_threshold)
    boxes, scores, labels, images = boxes[keep], scores[keep], labels[keep], images[keep]

    if target_sizes is not None:
        ratio = target_sizes.to(boxes.dtype) / image_sizes.to(boxes.dtype)  # (N, 2) as (h, w)
        boxes = boxes * ratio[images][:, [1, 0, 1, 0]]

    results = []
    for image in range(image_sizes.shape[0]):
        mine = images == image
        selected = _keep_best(scores[mine], detections_per_image)
        results.append({"scores": scores[mine][selected], "labels": labels[mine][selected], "boxes": boxes[mine][selected]})
    return results


__all__ = [
    "DEFAULT_CANDIDATE_THRESHOLD", "DEFAULT_DETECTIONS_PER_IMAGE", "DEFAULT_NMS_THRESHOLD", "DEFAULT_PRE_NMS_TOP_N",
    "batched_nms_inclusive", "check_finite_outputs", "check_post_process_settings", "check_probability",
    "check_target_sizes", "phrase_scores", "post_process_grounding",
]
