"""Inference precision: bf16 only where the device multiplies bf16 in hardware, and its accuracy on the fixture."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from torchvision.ops import box_iou

import glip_hf.deform_conv_glip as deform_conv_glip
from conftest import require_reference
from glip_hf import GlipForGrounding, GlipProcessor
from glip_hf.precision_glip import cpu_has_fast_bf16, default_precision, inference_autocast

# Bounds on the fixture (random weights, whose near-tied scores reorder under any bf16-sized noise): each of the
# float32 run's 5 best detections has a bf16 detection of the same phrase with this IoU and score difference.
TOP_DETECTIONS = 5
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


@pytest.mark.parametrize("bf16_product", [
    # Known open: with the float32 product one of fp32's five best boxes moves (IoU 0.76) on the merged model.
    pytest.param(False, id="fp32-product", marks=pytest.mark.xfail(reason="open: one top box moves under bf16 "
                                                                        "with the float32 deformable product")),
    pytest.param(True, id="bf16-product"),
])
def test_bf16_keeps_the_top_detections_of_fp32(fixture_runs, monkeypatch, bf16_product):
    """Under CPU bf16 autocast, with the deformable convs' product in float32 (CPUs without bf16 units) or in bf16
    (CPUs with them; forced here so that any CPU tests it)."""
    model, processor, prompts = fixture_runs
    monkeypatch.setattr(deform_conv_glip, "cpu_has_fast_bf16", lambda: bf16_product)
    for inputs in prompts:
        with torch.no_grad():
            exact = processor.post_process_grounded_object_detection(model(**inputs), inputs)[0]
            with inference_autocast("cpu", "bf16"):
                low = processor.post_process_grounded_object_detection(model(**inputs), inputs)[0]
        for index in exact["scores"].argsort(descending=True)[:TOP_DETECTIONS].tolist():
            same_phrase = (low["labels"] == exact["labels"][index]).nonzero().flatten()
            assert len(same_phrase) > 0
            overlaps = box_iou(exact["boxes"][index : index + 1], low["boxes"][same_phrase])[0]
            assert overlaps.max() > MIN_IOU
            match = same_phrase[overlaps.argmax()]
            assert abs(float(exact["scores"][index] - low["scores"][match])) < MAX_SCORE_DIFFERENCE
