"""Export: torch.export programs equal eager; ONNX (opset 18) run by ONNX Runtime matches PyTorch on the converted
reference fixture (whose deformable convs have the legacy offset flag on), with equal detections; two image sizes,
two prompt lengths and two batch sizes through one file; the cached-prompt graphs; the `glip-hf export` command."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, build, require_reference, tiny_config
from transformers.models.swin.modeling_swin import SwinLayer

from glip_hf import GlipForGrounding, GlipProcessor, cli
from glip_hf.export_glip import (
    any_image_size,
    example_inputs,
    export_mode,
    export_program,
    pad_pixel_values,
    post_process_exported,
    program_to_onnx,
)

onnxruntime = pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")
FIXTURE_SIZE = (320, 320)  # the fixture's 300x300 resized photo, padded to 32
SECOND_SIZE = (352, 416)  # the same photo padded further: another graph input size, with other Swin padding
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


@pytest.mark.parametrize("size", [(256, 320), (448, 448), (288, 224 * 3)])
def test_the_any_size_swin_layers_equal_transformers_own(size):
    # 448 and 672 are whole windows at every stage (no padding); 256, 288 and 320 are padded at every stage.
    model = build()
    inputs = example_inputs(model.config, size, batch=2, text_length=6)
    with torch.no_grad():
        theirs = model(**inputs)
        with any_image_size(model) as swapped:
            assert all("forward" in vars(layer) for layer in swapped.modules() if isinstance(layer, SwinLayer))
            ours = model(**inputs)
    assert not any("forward" in vars(layer) for layer in model.modules() if isinstance(layer, SwinLayer))
    for name in ("logits", "pred_boxes", "centerness"):
        assert torch.equal(ours[name], theirs[name]), name


def test_cached_prompt_graphs_equal_the_full_graph(tmp_path):
    torch.manual_seed(0)
    model = GlipForGrounding(tiny_config()).eval()
    example = example_inputs(model.config, (256, 288), batch=1, text_length=7)
    # The ONNX form of each graph (plain-product attention), so one trace serves torch.export and ONNX Runtime; a
    # static image size, as the graphs of any size are tested on the fixture.
    encoder = export_program(model, "text_encoder", example=example, eager_attention=True)
    detector = export_program(model, "cached_prompt", example=example, eager_attention=True,
                              dynamic_image_size=False)
    inputs = example_inputs(model.config, (256, 288), batch=2, text_length=9)
    with torch.no_grad(), export_mode(model, eager_attention=True):
        full = model(**inputs)
    with torch.no_grad():
        text_features = encoder.module()(inputs["input_ids"], inputs["attention_mask"])
        cached = detector.module()(inputs["pixel_values"], text_features, inputs["attention_mask"])
    for name, tensor in zip(("logits", "pred_boxes", "centerness"), cached):
        assert torch.equal(tensor, full[name]), name
    encoder_path = program_to_onnx(encoder, tmp_path / "text_encoder.onnx", "text_encoder")
    detector_path = program_to_onnx(detector, tmp_path / "cached_prompt.onnx", "cached_prompt")
    (onnx_features,) = run_onnx(encoder_path, {"input_ids": inputs["input_ids"],
                                               "attention_mask": inputs["attention_mask"]})
    assert relative_error(onnx_features, text_features) < ONNX_RTOL
    onnx_outputs = run_onnx(detector_path, {"pixel_values": inputs["pixel_values"],
                                            "text_features": torch.from_numpy(onnx_features),
                                            "attention_mask": inputs["attention_mask"]})
    for name, array in zip(("logits", "pred_boxes", "centerness"), onnx_outputs):
        assert relative_error(array, full[name]) < ONNX_RTOL, name


def _cli(*arguments):
    return subprocess.run([sys.executable, "-m", "glip_hf.cli", "export", *map(str, arguments)], capture_output=True,
                          text=True, cwd=REPO_ROOT, check=False)


def test_the_onnx_graph_names_its_inputs_and_outputs(fixture_onnx):
    session = onnxruntime.InferenceSession(str(fixture_onnx), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values", "input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["logits", "pred_boxes", "centerness"]


def test_cli_exports_a_static_fp16_program_and_never_overwrites(tmp_path):
    folder, output = tmp_path / "model", tmp_path / "glip.pt2"
    model = build(num_dyhead_layers=1)
    model.save_pretrained(folder)
    result = _cli("--model", folder, "--output", output, "--format", "torch-export", "--dtype", "fp16",
                  "--static-image-size", "--image-size", "128x160")  # a graph of one size may be below 256
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"detector: {output} (")
    program = torch.export.load(str(output)).module()
    inputs = example_inputs(model.config, (128, 160), batch=2, text_length=9, dtype=torch.float16)
    model = model.half()
    with torch.no_grad():
        eager = model(**inputs)
        exported = program(*inputs.values())
    for name, tensor in zip(("logits", "pred_boxes", "centerness"), exported):
        assert tensor.dtype == torch.float16 and torch.equal(tensor, eager[name]), name
    other_size = example_inputs(model.config, (160, 160), dtype=torch.float16)
    with pytest.raises(AssertionError, match="Guard failed"):
        program(*other_size.values())
    before = output.read_bytes()
    assert "--overwrite" in _refusal("--model", folder, "--output", output, "--format", "torch-export")
    assert output.read_bytes() == before


def _refusal(*arguments) -> str:
    """The error of `glip-hf export` with these arguments, run in this process (it must exit with one)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", *map(str, arguments)])
    message = str(exit_info.value.code)
    assert message.startswith("error:")
    return message


@pytest.mark.parametrize("arguments, message", [
    (["--image-size", "300x320"], "--image-size must be HxW in multiples of 32"),
    (["--image-size", "224x320"], "from 256 to 4096"),
    (["--opset", "15"], "GridSample needs at least 16"),
])
def test_cli_export_rejects_bad_options(converted_reference_dir, tmp_path, arguments, message):
    assert message in _refusal("--model", converted_reference_dir, "--output", tmp_path / "out.onnx", *arguments)
    assert not (tmp_path / "out.onnx").exists()


def test_cli_export_rejects_a_folder_without_a_model(tmp_path):
    assert "is not a GLIP model folder" in _refusal("--model", tmp_path, "--output", tmp_path / "out.onnx")
