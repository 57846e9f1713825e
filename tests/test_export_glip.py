"""Export of the converted reference fixture (its deformable convs have the legacy offset flag on): torch.export
programs equal eager; ONNX (opset 18) run by ONNX Runtime matches PyTorch, with equal detections; two image sizes,
two prompt lengths and two batch sizes through one file. Tiny models and the command line: test_export_cli.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ONNX_RTOL, relative_error, require_reference, run_onnx

from glip_hf import GlipForGrounding, GlipProcessor
from glip_hf.export_glip import (
    export_mode,
    export_program,
    pad_pixel_values,
    post_process_exported,
    program_to_onnx,
)

onnxruntime = pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")
FIXTURE_SIZE = (320, 320)  # the fixture's 300x300 resized photo, padded to 32
SECOND_SIZE = (352, 416)  # the same photo padded further: another graph input size, with other Swin padding


@pytest.fixture(scope="module")
def fixture_model(converted_reference_dir):
    """The converted reference checkpoint (its deformable convs have the legacy offset flag on) and processor."""
    model = GlipForGrounding.from_pretrained(converted_reference_dir).eval()
    assert model.config.legacy_upsampled_offset_reinterpretation
    return model, GlipProcessor.from_pretrained(converted_reference_dir)


@pytest.fixture(scope="module")
def fixture_inputs(fixture_model, astronaut_image):
    """The two captions of the fixture (13 and 18 tokens) on its photo, one processor call each."""
    _, processor = fixture_model
    root = require_reference("glip_tiny_random/inputs.json")
    import json

    captions = json.loads((root / "glip_tiny_random" / "inputs.json").read_text())["captions"]
    det = processor(images=astronaut_image, text=captions["det"]["category_names"])
    grounding = processor(images=astronaut_image, text=captions["grounding"]["caption"],
                          phrases=captions["grounding"]["phrases"])
    return [det, grounding]


@pytest.fixture(scope="module")
def fixture_program(fixture_model, fixture_inputs):
    """The fixture's detector through torch.export in its ONNX form (plain-product attention), for any image size."""
    model, _ = fixture_model
    example = {name: fixture_inputs[0][name] for name in ("pixel_values", "input_ids", "attention_mask")}
    return export_program(model, "detector", example=example, eager_attention=True)


@pytest.fixture(scope="module")
def fixture_onnx(fixture_program, tmp_path_factory):
    """That program as an ONNX file (default opset), as `glip-hf export` writes it."""
    return program_to_onnx(fixture_program, tmp_path_factory.mktemp("onnx") / "glip.onnx")


def _model_inputs(inputs, size=FIXTURE_SIZE) -> dict:
    return {"pixel_values": pad_pixel_values(inputs["pixel_values"], size),
            "input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}


def test_torch_export_equals_eager_for_two_image_sizes_and_two_prompt_lengths(fixture_model, fixture_inputs,
                                                                               fixture_program):
    model, _ = fixture_model
    assert [inputs["input_ids"].shape[1] for inputs in fixture_inputs] == [13, 18]
    for inputs in fixture_inputs:
        for size in (FIXTURE_SIZE, SECOND_SIZE):
            arguments = _model_inputs(inputs, size)
            with torch.no_grad(), export_mode(model, eager_attention=True):
                eager = model(**arguments)
            with torch.no_grad():
                exported = fixture_program.module()(*arguments.values())
            for name, tensor in zip(("logits", "pred_boxes", "centerness"), exported):
                assert torch.equal(tensor, eager[name]), (name, size)


def _detection_set(result) -> set:
    return {(int(label), tuple(np.round(box.tolist(), 1))) for label, box in zip(result["labels"], result["boxes"])}


@pytest.mark.parametrize("size", [FIXTURE_SIZE, SECOND_SIZE])
def test_onnx_matches_pytorch_and_gives_the_same_detections(fixture_model, fixture_inputs, fixture_onnx, size):
    model, processor = fixture_model
    for inputs in fixture_inputs:
        arguments = _model_inputs(inputs, size)
        with torch.no_grad():
            eager = model(**arguments)
        outputs = run_onnx(fixture_onnx, arguments)
        for name, array in zip(("logits", "pred_boxes", "centerness"), outputs):
            assert array.shape == tuple(eager[name].shape)
            assert relative_error(array, eager[name]) < ONNX_RTOL, name
        ours = post_process_exported(*outputs, inputs["token_maps"], inputs["image_sizes"], size,
                                     target_sizes=inputs["original_sizes"], label_ids=inputs["label_ids"],
                                     image_index=inputs["image_index"])
        theirs = processor.post_process_grounded_object_detection(eager, inputs)
        for exported_result, eager_result in zip(ours, theirs):
            assert len(exported_result["scores"]) > 0
            assert _detection_set(exported_result) == _detection_set(eager_result)


def test_onnx_takes_a_batch_of_two(fixture_model, fixture_inputs, fixture_onnx):
    model, _ = fixture_model
    path = fixture_onnx
    det = _model_inputs(fixture_inputs[0])
    batch = {name: torch.cat([tensor, tensor.flip(0) if name == "pixel_values" else tensor]) for name, tensor in
             det.items()}
    batch["pixel_values"][1] = batch["pixel_values"][1].flip(-1)
    with torch.no_grad():
        eager = model(**batch)
    logits, boxes, _ = run_onnx(path, batch)
    assert relative_error(logits, eager.logits) < ONNX_RTOL
    assert relative_error(boxes, eager.pred_boxes) < ONNX_RTOL


def test_the_onnx_graph_names_its_inputs_and_outputs(fixture_onnx):
    session = onnxruntime.InferenceSession(str(fixture_onnx), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values", "input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["logits", "pred_boxes", "centerness"]
