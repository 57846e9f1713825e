"""Box arithmetic in GLIP's conventions.

The original measures widths with the legacy "+1" of pixel-index boxes (w = x2 - x1 + 1) but takes centres as
(x1 + x2) / 2. Released weights were trained with these conventions, so they are reproduced exactly here.
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import box_iou

# Pixel-index boxes include both end pixels: a box from x1 to x2 is x2 - x1 + 1 pixels wide.
PIXEL_INCLUSIVE = 1.0


class GlipBoxCoder:
    """Encodes boxes as (dx, dy, dw, dh) offsets from anchors and decodes them back, with the +1 widths that
    released weights were trained with (no library coder has them).

    Args:
        weights: (wx, wy, ww, wh) that scale the four offsets.
        max_log_scale: upper clamp of the decoded dw, dh, so exp() cannot overflow.
    """

    def __init__(self, weights=(10.0, 10.0, 5.0, 5.0), max_log_scale: float = math.log(1000.0 / 16)):
        self.weights = tuple(float(w) for w in weights)
        self.max_log_scale = max_log_scale

    @staticmethod
    def _sizes_and_centres(boxes: torch.Tensor):
        widths = boxes[..., 2] - boxes[..., 0] + PIXEL_INCLUSIVE
        heights = boxes[..., 3] - boxes[..., 1] + PIXEL_INCLUSIVE
        centre_x = (boxes[..., 2] + boxes[..., 0]) / 2
        centre_y = (boxes[..., 3] + boxes[..., 1]) / 2
        return widths, heights, centre_x, centre_y

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """boxes, anchors (..., 4) xyxy -> offsets (..., 4)."""
        wx, wy, ww, wh = self.weights
        anchor_w, anchor_h, anchor_cx, anchor_cy = self._sizes_and_centres(anchors)
        box_w, box_h, box_cx, box_cy = self._sizes_and_centres(boxes)
        return torch.stack(
            (
                wx * (box_cx - anchor_cx) / anchor_w,
                wy * (box_cy - anchor_cy) / anchor_h,
                ww * torch.log(box_w / anchor_w),
                wh * torch.log(box_h / anchor_h),
            ),
            dim=-1,
        )

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """deltas (..., 4), anchors broadcastable (..., 4) xyxy -> boxes (..., 4) xyxy."""
        anchors = anchors.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        anchor_w, anchor_h, anchor_cx, anchor_cy = self._sizes_and_centres(anchors)
        centre_x = deltas[..., 0] / wx * anchor_w + anchor_cx
        centre_y = deltas[..., 1] / wy * anchor_h + anchor_cy
        width = torch.exp((deltas[..., 2] / ww).clamp(max=self.max_log_scale)) * anchor_w
        height = torch.exp((deltas[..., 3] / wh).clamp(max=self.max_log_scale)) * anchor_h
        half_w = 0.5 * (width - PIXEL_INCLUSIVE)
        half_h = 0.5 * (height - PIXEL_INCLUSIVE)
        return torch.stack((centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h), dim=-1)


def box_iou_inclusive(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU (N, M) of xyxy boxes with the +1 convention of the original's `boxlist_iou` and NMS:
    torchvision's IoU of the boxes with x2 and y2 moved out by one pixel."""
    return box_iou(shift_inclusive(boxes1), shift_inclusive(boxes2))


def shift_inclusive(boxes: torch.Tensor) -> torch.Tensor:
    """Pixel-index boxes (..., 4) as the equivalent boxes without the +1 (x2 and y2 one pixel further out)."""
    return boxes + boxes.new_tensor([0.0, 0.0, PIXEL_INCLUSIVE, PIXEL_INCLUSIVE])
