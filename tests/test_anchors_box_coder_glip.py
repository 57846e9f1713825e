"""Anchors and the box coder in the original's +1 pixel conventions."""

from __future__ import annotations

import math

import torch
from conftest import build, tiny_inputs

from glip_hf.box_ops_glip import GlipBoxCoder, box_iou_inclusive
from glip_hf.head_glip import GlipAnchorGenerator


def test_anchor_layout_matches_the_original():
    generator = GlipAnchorGenerator([64, 128, 256, 512, 1024], [8, 16, 32, 64, 128], [1.0])
    levels = generator.anchors_per_level([(2, 3), (1, 2), (1, 1), (1, 1), (1, 1)], torch.device("cpu"))
    first_level = levels[0]
    assert first_level.shape == (6, 4)
    # A stride-8 cell is centred at (8 - 1) / 2 = 3.5; a 64-pixel box around it spans [-28, 35].
    assert first_level[0].tolist() == [-28.0, -28.0, 35.0, 35.0]
    # Row-major with y outer: the next anchor moves one stride right, anchor W moves one stride down.
    assert first_level[1].tolist() == [-20.0, -28.0, 43.0, 35.0]
    assert first_level[3].tolist() == [-28.0, -20.0, 35.0, 43.0]
    # Stride 16, size 128: centre 7.5, half-extent (128 - 1) / 2.
    assert levels[1][0].tolist() == [-56.0, -56.0, 71.0, 71.0]
    assert levels[1][1].tolist() == [-40.0, -56.0, 87.0, 71.0]
    widths = first_level[:, 2] - first_level[:, 0] + 1
    assert torch.equal(widths, torch.full((6,), 64.0))


def test_model_anchors_are_the_generator_anchors_for_every_image():
    model = build()
    with torch.no_grad():
        outputs = model(**tiny_inputs(2, 256, 320, 5))
    assert outputs.anchors[0, 0].tolist() == [-28.0, -28.0, 35.0, 35.0]
    assert outputs.anchors[0, 1].tolist() == [-20.0, -28.0, 43.0, 35.0]
    width = int(outputs.spatial_shapes[0, 1])
    assert outputs.anchors[0, width].tolist() == [-28.0, -20.0, 35.0, 43.0]
    # The first anchor of P4 follows the last of P3.
    p3_size = int(outputs.spatial_shapes[0].prod())
    assert outputs.anchors[0, p3_size].tolist() == [-56.0, -56.0, 71.0, 71.0]
    assert torch.equal(outputs.anchors[0], outputs.anchors[1])
    # pred_boxes are the box_regression decoded on those anchors.
    decoded = GlipBoxCoder(model.config.box_coder_weights, model.config.box_coder_max_log_scale).decode(
        outputs.box_regression, outputs.anchors
    )
    torch.testing.assert_close(outputs.pred_boxes, decoded)


def test_box_coder_round_trip_and_zero_deltas():
    coder = GlipBoxCoder()
    generator = torch.Generator().manual_seed(0)
    anchors = torch.rand(50, 2, generator=generator) * 300
    anchors = torch.cat([anchors, anchors + 16 + torch.rand(50, 2, generator=generator) * 200], dim=1)
    boxes = torch.rand(50, 2, generator=generator) * 300
    boxes = torch.cat([boxes, boxes + 4 + torch.rand(50, 2, generator=generator) * 300], dim=1)

    deltas = coder.encode(boxes, anchors)
    torch.testing.assert_close(coder.decode(deltas, anchors), boxes, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(coder.decode(torch.zeros_like(anchors), anchors), anchors, atol=1e-4, rtol=1e-6)
    # The +1 width convention: a box one pixel wider than its anchor has dw = 5 * log((w + 1) / w).
    anchor = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    wider = torch.tensor([[0.0, 0.0, 10.0, 9.0]])
    torch.testing.assert_close(coder.encode(wider, anchor)[0, 2], torch.tensor(5.0 * math.log(11 / 10)))
    # Huge log-scales are clamped so exp() stays finite.
    huge = coder.decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), anchor)
    assert torch.isfinite(huge).all()


def test_inclusive_iou_counts_both_end_pixels():
    """box_iou_inclusive is the original's +1 IoU: widths x2 - x1 + 1, overlaps likewise."""
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [5.0, 0.0, 14.0, 9.0], [20.0, 20.0, 20.0, 20.0]])
    # 10x10 boxes overlapping on 5x10 pixels: 50 / (100 + 100 - 50); a 1-pixel box is its own exact match.
    expected = torch.tensor([[1.0, 50 / 150, 0.0], [50 / 150, 1.0, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(box_iou_inclusive(boxes, boxes), expected)
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(30, 2, generator=generator) * 50
    random_boxes = torch.cat([corners, corners + torch.rand(30, 2, generator=generator) * 40], dim=1)
    top_left = torch.maximum(random_boxes[:, None, :2], random_boxes[None, :, :2])
    bottom_right = torch.minimum(random_boxes[:, None, 2:], random_boxes[None, :, 2:])
    overlap = (bottom_right - top_left + 1).clamp(min=0).prod(-1)
    area = (random_boxes[:, 2:] - random_boxes[:, :2] + 1).prod(-1)
    torch.testing.assert_close(box_iou_inclusive(random_boxes, random_boxes),
                               overlap / (area[:, None] + area[None, :] - overlap))
