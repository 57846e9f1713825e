"""GLIP's training losses: ATSS anchor assignment, token focal loss, GIoU box loss and centerness BCE.

`labels` is a list with one dict per image:
    "boxes":     (n, 4) float, xyxy in pixels of the model input (the resized image, before padding offsets);
    "token_map": (n, T) 0/1, the tokens of the phrase each box is grounded to (T = the batch's text length).
An image with n = 0 boxes trains on negatives only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from .box_ops_glip import GlipBoxCoder, box_iou_inclusive

# Anchors must lie strictly inside their box, by this margin in pixels, to be positives (the original's 0.01).
INSIDE_MARGIN = 0.01


def _distributed_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over processes (the original's `reduce_sum(...) / num_gpus`); the value itself in a single process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    from accelerate.utils import reduce  # several processes: training under accelerate (the `train` extra)

    return reduce(value, reduction="mean")


class GlipAtssAssigner:
    """Adaptive Training Sample Selection (Zhang et al., 2020) with the original's conventions.

    Per box: the `topk` anchors of each level nearest by centre distance are candidates; those whose +1 IoU is at
    least mean + unbiased std of the candidates' IoUs, and whose centre lies inside the box, are positives. An anchor
    positive for several boxes goes to the one with the largest IoU.
    """

    def __init__(self, topk: int = 9):
        self.topk = topk

    @staticmethod
    def _centres(boxes: torch.Tensor) -> torch.Tensor:
        return torch.stack(((boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2), dim=1)

    def __call__(self, anchors: torch.Tensor, anchors_per_level: list[int], boxes: torch.Tensor):
        """anchors (A, 4), boxes (n, 4) -> matched box index per anchor (A,), -1 for negatives."""
        num_anchors, num_boxes = anchors.shape[0], boxes.shape[0]
        if num_boxes == 0:
            return torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
        ious = box_iou_inclusive(anchors, boxes)  # (A, n)
        anchor_centres = self._centres(anchors)
        distances = (anchor_centres[:, None, :] - self._centres(boxes)[None, :, :]).pow(2).sum(-1).sqrt()
        candidates, start = [], 0
        for count in anchors_per_level:
            nearest = distances[start:start + count].topk(min(self.topk, count), dim=0, largest=False).indices
            candidates.append(nearest + start)
            start += count
        candidates = torch.cat(candidates)  # (K, n)
        candidate_ious = ious.gather(0, candidates)
        threshold = candidate_ious.mean(0) + candidate_ious.std(0)
        centres = anchor_centres[candidates]  # (K, n, 2)
        inside = torch.stack((
            centres[..., 0] - boxes[:, 0], centres[..., 1] - boxes[:, 1],
            boxes[:, 2] - centres[..., 0], boxes[:, 3] - centres[..., 1],
        ), dim=-1).amin(-1) > INSIDE_MARGIN
        positive = (candidate_ious >= threshold) & inside
        box_index = torch.arange(num_boxes, device=anchors.device).expand_as(candidates)
        masked = torch.full_like(ious, -torch.inf)
        masked[candidates[positive], box_index[positive]] = ious[candidates[positive], box_index[positive]]
        best_iou, matched = masked.max(dim=1)
        return torch.where(torch.isinf(best_iou), torch.full_like(matched, -1), matched)


def token_sigmoid_focal_loss(logits, targets, text_mask, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sum of the binary focal loss over real text tokens. logits, targets (B, A, T); text_mask (B, T).

    torchvision's focal loss is the original's formula (both from fvcore); the original sums it over real tokens.
    """
    loss = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none")
    return (loss * (text_mask[:, None, :] > 0)).sum()


def giou_loss(pred_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
    """Per-box 1 - GIoU, as the original: no +1 on areas, predicted x2/y2 raised to x1/y1, 1e-7 in the ratios."""
    x1, y1 = pred_boxes[:, 0], pred_boxes[:, 1]
    x2, y2 = torch.maximum(x1, pred_boxes[:, 2]), torch.maximum(y1, pred_boxes[:, 3])
    tx1, ty1, tx2, ty2 = target_boxes.unbind(1)
    pred_area = (x2 - x1) * (y2 - y1)
    target_area = (tx2 - tx1) * (ty2 - ty1)
    inter_w = (torch.minimum(x2, tx2) - torch.maximum(x1, tx1)).clamp(min=0)
    inter_h = (torch.minimum(y2, ty2) - torch.maximum(y1, ty1)).clamp(min=0)
    intersection = inter_w * inter_h
    enclosing = (torch.maximum(x2, tx2) - torch.minimum(x1, tx1)) * (torch.maximum(y2, ty2) - torch.minimum(y1, ty1))
    enclosing = enclosing + 1e-7
    union = pred_area + target_area - intersection + 1e-7
    return 1 - (intersection / union - (enclosing - union) / enclosing)


def centerness_targets(target_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of the anchor centre inside its box."""
    centre_x = (anchors[:, 0] + anchors[:, 2]) / 2
    centre_y = (anchors[:, 1] + anchors[:, 3]) / 2
    left_right = torch.stack((centre_x - target_boxes[:, 0], target_boxes[:, 2] - centre_x), dim=1)
    top_bottom = torch.stack((centre_y - target_boxes[:, 1], target_boxes[:, 3] - centre_y), dim=1)
    ratio = (left_right.amin(1) / left_right.amax(1)) * (top_bottom.amin(1) / top_bottom.amax(1))
    return ratio.sqrt()


class GlipLoss:
    """All of GLIP's loss terms for a batch; see the module docstring for the `labels` format.

    Returns a dict with `loss_dot_product_token`, `loss_reg` (already x `box_loss_weight`), `loss_centerness`, the
    total `loss`, and `num_positive_anchors`. Normalisers are averaged over processes as in the original.
    """

    def __init__(self, box_coder: GlipBoxCoder, topk=9, focal_alpha=0.25, focal_gamma=2.0, box_loss_weight=2.0):
        self.box_coder = box_coder
        self.assigner = GlipAtssAssigner(topk)
        self.focal_alpha, self.focal_gamma, self.box_loss_weight = focal_alpha, focal_gamma, box_loss_weight

    def assign(self, anchors, anchors_per_level, labels, text_length):
        """Targets per anchor: matched index (B, A) with -1 = negative, regression (B, A, 4), tokens (B, A, T)."""
        matched, regression, tokens = [], [], []
        for target in labels:
            boxes = target["boxes"].to(anchors)
            token_map = target["token_map"].to(anchors)[:, :text_length]
            if boxes.shape[0] != token_map.shape[0]:
                raise ValueError(f"labels: {boxes.shape[0]} boxes but {token_map.shape[0]} token_map rows")
            index = self.assigner(anchors, anchors_per_level, boxes)
            safe = index.clamp(min=0)
            matched_boxes = boxes[safe] if boxes.shape[0] else anchors
            matched.append(index)
            regression.append(self.box_coder.encode(matched_boxes, anchors))
            token_rows = token_map[safe] if boxes.shape[0] else anchors.new_zeros(len(anchors), text_length)
            tokens.append(torch.where((index >= 0)[:, None], (token_rows > 0).to(anchors.dtype), 0.0))
        return torch.stack(matched), torch.stack(regression), torch.stack(tokens)

    def __call__(self, logits, box_regression, centerness, anchors, anchors_per_level, text_mask, labels):
        if len(labels) != logits.shape[0]:
            raise ValueError(f"labels has {len(labels)} entries for a batch of {logits.shape[0]}")
        logits, box_regression, centerness = logits.float(), box_regression.float(), centerness.float()
        anchors = anchors.float()
        matched, regression_targets, token_targets = self.assign(anchors, anchors_per_level, labels, logits.shape[-1])
        positive = matched >= 0
        num_positive = positive.sum()
        normaliser = _distributed_mean(num_positive.float()).clamp(min=1.0)
        token_loss = token_sigmoid_focal_loss(
            logits, token_targets, text_mask, self.focal_alpha, self.focal_gamma
        ) / normaliser

        positive_anchors = anchors.expand(positive.shape[0], -1, -1)[positive]
        target_boxes = self.box_coder.decode(regression_targets[positive], positive_anchors)
        centerness_target = centerness_targets(target_boxes, positive_anchors)
        pred_boxes = self.box_coder.decode(box_regression[positive], positive_anchors)
        per_box = giou_loss(pred_boxes, target_boxes)
        weight_sum = _distributed_mean(centerness_target.sum().detach())
        if positive.any():
            reg_loss = (per_box * centerness_target).sum() / weight_sum.clamp(min=1e-12)
        else:
            reg_loss = box_regression.sum() * 0.0  # keeps the graph (and DDP) intact on images without boxes
        centerness_loss = F.binary_cross_entropy_with_logits(
            centerness[positive], centerness_target, reduction="sum"
        ) / normaliser
        terms = {
            "loss_dot_product_token": token_loss,
            "loss_reg": reg_loss * self.box_loss_weight,
            "loss_centerness": centerness_loss,
        }
        terms["loss"] = sum(terms.values())
        terms["num_positive_anchors"] = num_positive
        return terms


__all__ = ["GlipAtssAssigner", "GlipLoss", "centerness_targets", "giou_loss", "token_sigmoid_focal_loss"]
