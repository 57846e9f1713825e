"""Export: torch.export programs equal eager; ONNX (opset 18) run by ONNX Runtime matches PyTorch on the converted
reference fixture (whose deformable convs have the legacy offset flag on), with equal detections; two prompt lengths
and two batch sizes through one file; the cached-prompt graphs; the `glip-hf export` command."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, require_reference, tiny_config

from glip_hf import GlipForGrounding, GlipProcessor
from glip_hf.export_glip import (
    example_inputs,
    export_program,
    pad_pixel_values,
    post_process_exported,
    program_to_onnx,
)

onnxruntime = pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")
FIXTURE_SIZE = (320, 320)  # the fixture's 300x300 resized photo, padded to 32
ONNX_RTOL = 1e-4


def relative_error(ours, reference) -> float:
    ours, reference = np.asarray(ours, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return float(np.linalg.norm(ours - reference) / max(np.linalg.norm(reference), 1e-30))


def run_onnx(path, inputs: dict) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})


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
    """The fixture's detector through torch.export, in this process."""
    model, _ = fixture_model
    example = {name: fixture_inputs[0][name] for name in ("pixel_values", "input_ids", "attention_mask")}
    return export_program(model, "detector", FIXTURE_SIZE, example=example)


@pytest.fixture(scope="module")
def fixture_onnx(converted_reference_dir, tmp_path_factory):
    """The fixture's detector exported by `glip-hf export` (ONNX, default opset)."""
    output = tmp_path_factory.mktemp("onnx") / "glip.onnx"
    result = _cli("--model", converted_reference_dir, "--output", output, "--image-size", "320x320")
    assert result.returncode == 0, result.stderr
    return output


def _model_inputs(inputs) -> dict:
    return {"pixel_values": pad_pixel_values(inputs["pixel_values"], FIXTURE_SIZE),
            "input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}


def test_torch_export_equals_eager_for_two_prompt_lengths(fixture_model, fixture_inputs, fixture_program):
    model, _ = fixture_model
    program = fixture_program
    assert [inputs["input_ids"].shape[1] for inputs in fixture_inputs] == [13, 18]
    for inputs in fixture_inputs:
        arguments = _model_inputs(inputs)
        with torch.no_grad():
            eager = model(**arguments)
            exported = program.module()(*arguments.values())
        for name, tensor in zip(("logits", "pred_boxes", "centerness"), exported):
            assert torch.equal(tensor, eager[name]), name


def test_onnx_matches_pytorch_and_gives_the_same_detections(fixture_model, fixture_inputs, fixture_onnx):
    model, processor = fixture_model
    path = fixture_onnx
    for inputs in fixture_inputs:
        arguments = _model_inputs(inputs)
        with torch.no_grad():
            eager = model(**arguments)
        outputs = run_onnx(path, arguments)
        for name, array in zip(("logits", "pred_boxes", "centerness"), outputs):
            assert array.shape == tuple(eager[name].shape)
            assert relative_error(array, eager[name]) < ONNX_RTOL, name
        ours = post_process_exported(*outputs, inputs["token_maps"], inputs["image_sizes"], FIXTURE_SIZE,
                                     target_sizes=inputs["original_sizes"], label_ids=inputs["label_ids"],
                                     image_index=inputs["image_index"])
        theirs = processor.post_process_grounded_object_detection(eager, inputs)
        for exported_result, eager_result in zip(ours, theirs):
            assert len(exported_result["scores"]) > 0
            exported_set = {(int(label), tuple(np.round(box.tolist(), 1))) for label, box in
                            zip(exported_result["labels"], exported_result["boxes"])}
            eager_set = {(int(label), tuple(np.round(box.tolist(), 1))) for label, box in
                         zip(eager_result["labels"], eager_result["boxes"])}
            assert exported_set == eager_set


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


def test_cached_prompt_graphs_equal_the_full_graph(tmp_path):
    torch.manual_seed(0)
    model = GlipForGrounding(tiny_config()).eval()
    example = example_inputs(model.config, (128, 160), batch=1, text_length=7)
    encoder = export_program(model, "text_encoder", (128, 160), example=example)
    detector = export_program(model, "cached_prompt", (128, 160), example=example)
    inputs = example_inputs(model.config, (128, 160), batch=2, text_length=9)
    with torch.no_grad():
        eager = model(**inputs)
        text_features = encoder.module()(inputs["input_ids"], inputs["attention_mask"])
        logits, boxes, centerness = detector.module()(inputs["pixel_values"], text_features, inputs["attention_mask"])
    assert torch.equal(centerness, eager.centerness)
    assert torch.equal(logits, eager.logits)
    assert torch.equal(boxes, eager.pred_boxes)
    onnx_encoder = export_program(model, "text_encoder", (128, 160), example=example, eager_attention=True)
    path = program_to_onnx(onnx_encoder, tmp_path / "text_encoder.onnx", "text_encoder")
    (onnx_features,) = run_onnx(path, {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]})
    assert relative_error(onnx_features, text_features) < ONNX_RTOL


def _cli(*arguments):
    return subprocess.run([sys.executable, "-m", "glip_hf.cli", "export", *map(str, arguments)], capture_output=True,
                          text=True, cwd=REPO_ROOT, check=False)


def test_cli_export_names_the_graph_io_and_never_overwrites(converted_reference_dir, fixture_onnx):
    session = onnxruntime.InferenceSession(str(fixture_onnx), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values", "input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["logits", "pred_boxes", "centerness"]
    before = fixture_onnx.read_bytes()
    again = _cli("--model", converted_reference_dir, "--output", fixture_onnx, "--image-size", "320x320")
    assert again.returncode != 0 and again.stderr.startswith("error:") and "--overwrite" in again.stderr
    assert fixture_onnx.read_bytes() == before


@pytest.mark.parametrize("arguments, message", [
    (["--image-size", "300x320"], "--image-size must be HxW in multiples of 32"),
    (["--opset", "15"], "GridSample needs at least 16"),
])
def test_cli_export_rejects_bad_options(converted_reference_dir, tmp_path, arguments, message):
    result = _cli("--model", converted_reference_dir, "--output", tmp_path / "out.onnx", *arguments)
    assert result.returncode != 0
    assert result.stderr.strip().startswith("error:") and message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_export_rejects_a_folder_without_a_model(tmp_path):
    result = _cli("--model", tmp_path, "--output", tmp_path / "out.onnx")
    assert result.returncode != 0 and "is not a GLIP model folder" in result.stderr
