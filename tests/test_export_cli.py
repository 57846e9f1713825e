"""Export on tiny models: the any-size Swin layers, the cached-prompt graphs, fp16 and bf16 programs; `glip-hf
export`'s files and refusals. The converted reference fixture's graphs: test_export_glip.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import ONNX_RTOL, REPO_ROOT, build, relative_error, run_onnx, tiny_config
from transformers.models.swin.modeling_swin import SwinLayer

from glip_hf import GlipForGrounding, cli
from glip_hf.export_glip import (
    any_image_size,
    example_inputs,
    export_mode,
    export_onnx,
    export_program,
    program_to_onnx,
)

pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")


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


def test_a_bf16_program_equals_the_bf16_model_and_onnx_refuses_bf16(tmp_path):
    model = build(num_dyhead_layers=1)
    program = export_program(model, "detector", (128, 160), dtype=torch.bfloat16, dynamic_image_size=False)
    inputs = example_inputs(model.config, (128, 160), batch=2, text_length=9, dtype=torch.bfloat16)
    with torch.no_grad():
        eager = model(**inputs)  # export_program moved the model to bf16
        exported = program.module()(*inputs.values())
    for name, tensor in zip(("logits", "pred_boxes", "centerness"), exported):
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, eager[name]), name
    with pytest.raises(ValueError, match="export with export_program"):
        export_onnx(model, tmp_path / "bf16.onnx", image_size=(128, 160), dtype=torch.bfloat16)
    assert not (tmp_path / "bf16.onnx").exists()


def _cli(*arguments):
    return subprocess.run([sys.executable, "-m", "glip_hf.cli", "export", *map(str, arguments)], capture_output=True,
                          text=True, cwd=REPO_ROOT, check=False)


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
    (["--dtype", "bf16"], "--dtype bf16 needs --format torch-export"),
])
def test_cli_export_rejects_bad_options(converted_reference_dir, tmp_path, arguments, message):
    assert message in _refusal("--model", converted_reference_dir, "--output", tmp_path / "out.onnx", *arguments)
    assert not (tmp_path / "out.onnx").exists()


def test_cli_export_rejects_a_folder_without_a_model(tmp_path):
    assert "is not a GLIP model folder" in _refusal("--model", tmp_path, "--output", tmp_path / "out.onnx")
