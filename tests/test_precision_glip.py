"""Inference precision: bf16 only where the device multiplies bf16 in hardware, and its accuracy on the fixture."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from conftest import require_reference
from torchvision.ops import box_iou

from glip_hf import GlipForGrounding, GlipProcessor, deform_conv_glip
from glip_hf.postprocessing_glip import phrase_scores
from glip_hf.precision_glip import cpu_has_fast_bf16, default_precision, inference_autocast

# Bounds on the fixture: for each of the float32 run's 5 best (anchor, phrase) candidates, the bf16 run's box at the
# same anchor overlaps it by this IoU and its score differs by less than this. The comparison is per anchor, before
# NMS: the random weights give near-tied neighbouring anchors, and which of two tied anchors NMS keeps is not a
# property of the precision.
TOP_CANDIDATES = 5
MIN_IOU = 0.95
MAX_SCORE_DIFFERENCE = 0.02


def test_cpu_defaults_to_bf16_only_with_bf16_hardware():
    assert default_precision("cpu") == ("bf16" if cpu_has_fast_bf16() else "fp32")
    context = inference_autocast("cpu")
    assert isinstance(context, torch.autocast) == cpu_has_fast_bf16()
    assert isinstance(inference_autocast("cpu", "fp32"), contextlib.nullcontext)
    assert isinstance(inference_autocast("cpu", "bf16"), torch.autocast)
    with pytest.raises(ValueError, match="precision must be one of"):
        inference_autocast("cpu", "fp16")


@pytest.fixture(scope="module")
def fixture_runs(converted_reference_dir, astronaut_image):
    root = require_reference("glip_tiny_random/inputs.json")
    captions = json.loads((root / "glip_tiny_random" / "inputs.json").read_text())["captions"]
    model = GlipForGrounding.from_pretrained(converted_reference_dir).eval()
    processor = GlipProcessor.from_pretrained(converted_reference_dir)
    prompts = [processor(images=astronaut_image, text=captions["det"]["category_names"]),
               processor(images=astronaut_image, text=captions["grounding"]["caption"],
                         phrases=captions["grounding"]["phrases"])]
    return model, processor, prompts


def _candidate_scores(outputs, inputs):
    """(A, P) final scores of the first prompt row: sqrt(phrase score x centerness), as post-processing ranks them."""
    scores = phrase_scores(outputs.logits.float(), inputs["token_maps"])[0]
    return (scores * outputs.centerness.float()[0].sigmoid()[:, None]).sqrt()


@pytest.mark.parametrize("bf16_product", [pytest.param(False, id="fp32-product"), pytest.param(True, id="bf16-product")])
def test_bf16_keeps_the_top_candidates_of_fp32(fixture_runs, monkeypatch, bf16_product):
    """Under CPU bf16 autocast, with the deformable convs' product in float32 (CPUs without bf16 units) or in bf16
    (CPUs with them; forced here so that any CPU tests it)."""
    model, _, prompts = fixture_runs
    monkeypatch.setattr(deform_conv_glip, "cpu_has_fast_bf16", lambda: bf16_product)
    for inputs in prompts:
        with torch.no_grad():
            exact = model(**inputs)
            with inference_autocast("cpu", "bf16"):
                low = model(**inputs)
        exact_scores, low_scores = _candidate_scores(exact, inputs), _candidate_scores(low, inputs)
        best = exact_scores.flatten().topk(TOP_CANDIDATES).indices
        anchors, phrases = best // exact_scores.shape[1], best % exact_scores.shape[1]
        overlaps = box_iou(exact.pred_boxes[0, anchors].float(), low.pred_boxes[0, anchors].float()).diagonal()
        assert overlaps.min() > MIN_IOU, overlaps
        differences = (exact_scores[anchors, phrases] - low_scores[anchors, phrases]).abs()
        assert differences.max() < MAX_SCORE_DIFFERENCE, differences


def test_bf16_detections_keep_the_phrases_of_fp32(fixture_runs):
    """End to end through NMS: the best float32 detection's phrase is among bf16's detections, with a box near it."""
    model, processor, prompts = fixture_runs
    for inputs in prompts:
        with torch.no_grad():
            exact = processor.post_process_grounded_object_detection(model(**inputs), inputs)[0]
            with inference_autocast("cpu", "bf16"):
                low = processor.post_process_grounded_object_detection(model(**inputs), inputs)[0]
        best = int(exact["scores"].argmax())
        same_phrase = (low["labels"] == exact["labels"][best]).nonzero().flatten()
        assert len(same_phrase) > 0
        assert box_iou(exact["boxes"][best : best + 1], low["boxes"][same_phrase]).max() > MIN_IOU
