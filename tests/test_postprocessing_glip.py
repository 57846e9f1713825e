"""Unit tests of the batched post-processing against slow, literal re-statements of the original's rules."""

from __future__ import annotations

import pytest
import torch

from glip_hf.box_ops_glip import box_iou_inclusive
from glip_hf.postprocessing_glip import batched_nms_inclusive, phrase_scores, post_process_grounding


def reference_nms(boxes, scores, groups, threshold):
    """The original ml_nms: per group, drop a box whose +1 IoU with a kept higher-scored box exceeds the threshold."""
    kept_per_group = {}
    for index in torch.argsort(scores, descending=True, stable=True).tolist():
        same_group = kept_per_group.setdefault(int(groups[index]), [])
        if not same_group or box_iou_inclusive(boxes[index:index + 1], boxes[same_group]).max() <= threshold:
            same_group.append(index)
    return sorted(index for kept in kept_per_group.values() for index in kept)


def random_boxes(count, groups, seed):
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=generator) * 200
    size = torch.rand(count, 2, generator=generator) * 60 + 1
    boxes = torch.cat([corner, corner + size], dim=1).round()  # integer corners make +1 matter
    return boxes, torch.rand(count, generator=generator), torch.randint(0, groups, (count,), generator=generator)


@pytest.mark.parametrize("count, groups", [(300, 3), (2500, 40)])  # one call / one call per group
def test_batched_nms_matches_the_plus_one_reference(count, groups):
    boxes, scores, labels = random_boxes(count, groups, seed=count)
    keep = batched_nms_inclusive(boxes, scores, labels, 0.6)
    assert sorted(keep.tolist()) == reference_nms(boxes, scores, labels, 0.6)
    assert torch.all(scores[keep][:-1] >= scores[keep][1:])


def test_plus_one_convention_changes_the_decision():
    # Two 2x2-pixel boxes one pixel apart: +1 IoU = 6/12 = 0.5, plain IoU = 1/3 when widths are x2 - x1.
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0], [1.0, 0.0, 3.0, 1.0]])
    scores, groups = torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.long)
    assert batched_nms_inclusive(boxes, scores, groups, 0.45).tolist() == [0]
    assert sorted(batched_nms_inclusive(boxes, scores, groups, 0.55).tolist()) == [0, 1]


def test_phrase_scores_are_the_mean_token_probability():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 9, generator=generator)
    token_maps = torch.zeros(2, 3, 9)
    token_maps[0, 0, [1, 2]] = 1
    token_maps[0, 1, [4]] = 1
    token_maps[1, 0, [3, 5, 6]] = 1  # row 1 phrase 1 and both rows' phrase 2 stay empty (padding)
    scores = phrase_scores(logits, token_maps)
    probabilities = logits.sigmoid()
    torch.testing.assert_close(scores[0, :, 0], probabilities[0, :, [1, 2]].mean(-1))
    torch.testing.assert_close(scores[0, :, 1], probabilities[0, :, 4])
    torch.testing.assert_close(scores[1, :, 0], probabilities[1, :, [3, 5, 6]].mean(-1))
    assert torch.all(scores[:, :, 2] == 0) and torch.all(scores[1, :, 1] == 0)


def _single_level_case(probability, centerness_logit, box):
    scores = torch.tensor([[[probability]]])
    return scores, torch.tensor([[centerness_logit]]), torch.tensor([[box]]), torch.tensor([[1, 1]])


def test_threshold_applies_before_centerness_and_score_is_the_geometric_mean():
    scores, centerness, boxes, shapes = _single_level_case(0.06, -3.0, [10.0, 10.0, 20.0, 20.0])
    (result,) = post_process_grounding(scores, centerness, boxes, shapes, torch.tensor([[100, 100]]), candidate_threshold=0.05)
    expected = (0.06 * torch.sigmoid(torch.tensor(-3.0))).sqrt()
    assert len(result["scores"]) == 1 and torch.isclose(result["scores"][0], expected)
    (nothing,) = post_process_grounding(scores, centerness, boxes, shapes, torch.tensor([[100, 100]]), candidate_threshold=0.07)
    assert nothing["scores"].shape == (0,) and nothing["boxes"].shape == (0, 4) and nothing["labels"].shape == (0,)


def test_boxes_are_clipped_to_the_resized_image_then_rescaled():
    scores, centerness, boxes, shapes = _single_level_case(0.9, 5.0, [-5.0, 40.0, 150.0, 130.0])
    (result,) = post_process_grounding(scores, centerness, boxes, shapes, torch.tensor([[100, 120]]),
                                       target_sizes=torch.tensor([[200, 360]]))
    # clip to [0, 119] x [0, 99], then x * 360/120 and y * 200/100
    torch.testing.assert_close(result["boxes"][0], torch.tensor([0.0, 80.0, 357.0, 198.0]))


def test_detections_per_image_keeps_ties_at_the_cut():
    scores = torch.tensor([[[0.9], [0.5], [0.5], [0.2]]])
    boxes = torch.tensor([[[0.0, 0.0, 5.0, 5.0], [20.0, 0.0, 25.0, 5.0], [40.0, 0.0, 45.0, 5.0], [60.0, 0, 65, 5]]])
    (result,) = post_process_grounding(scores, torch.full((1, 4), 10.0), boxes, torch.tensor([[2, 2]]),
                                       torch.tensor([[100, 100]]), detections_per_image=2)
    assert len(result["scores"]) == 3  # 0.9 and the two tied 0.5s
