"""ONNX Runtime's int8 dynamic quantization of an exported GLIP graph, and its accuracy on the reference fixture.

    python benchmarks/onnx_int8.py --model DIR [--image-size 320x320]

DIR is the converted reference checkpoint (`convert/convert_glip_to_hf.py` on `../shared/reference/glip_tiny_random`).
The script exports its detector at one image size, quantizes it three ways (every linear layer; all but the vision
tower; the text tower and the DyHead's BERT layers only), runs each against the fp32 file on the fixture's two
captions, and prints the bounds `tests/test_precision_glip.py` holds bf16 to: for fp32's 5 best (anchor, phrase)
candidates, the IoU of the int8 box at the same anchor and the score difference. `bench_deploy.py` times the
quantized file of every linear layer.

Quantization: the matrix products with a constant weight take int8 weights and activations quantized per call
(`MatMulInteger`, `DynamicQuantizeLinear`); convolutions, sampling and the attention's products stay float32.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import tempfile
from pathlib import Path

import torch

GROUPS = {
    "every linear layer": (),
    "all but the vision tower": ("model.model.vision_backbone",),
    "text tower and DyHead BERT layers only": ("model.model.vision_backbone", "fusion"),
}
TOP_CANDIDATES = 5


def _module_of_node(path) -> dict[str, str]:
    """Node name -> the modules that produced it, outermost first and joined by "/", from the exporter's metadata."""
    import onnx

    scopes = {}
    for node in onnx.load(str(path)).graph.node:
        meta = {prop.key: prop.value for prop in node.metadata_props}
        if "pkg.torch.onnx.name_scopes" in meta:
            scopes[node.name] = "/".join(ast.literal_eval(meta["pkg.torch.onnx.name_scopes"]))
    return scopes


def int8_copy(source, destination, float_modules=()) -> Path:
    """Writes the dynamic int8 quantization of `source` (an fp32 file from `glip_hf.export_glip.export_onnx`) at
    `destination`; linear layers inside a module whose name contains one of `float_modules` stay float32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    scopes = _module_of_node(source) if float_modules else {}
    with tempfile.TemporaryDirectory(dir=Path(destination).parent) as folder:
        prepared = Path(folder) / "prepared.onnx"
        # The exporter feeds each linear weight through a Transpose; folding it leaves the weight a constant, the
        # only operand the quantizer converts.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        nodes = None
        if float_modules:
            graph = onnx.load(str(prepared)).graph
            nodes = [node.name for node in graph.node if node.op_type == "MatMul"
                     and not any(part in scopes.get(node.name, "") for part in float_modules)]
        quantize_dynamic(str(prepared), str(destination), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         nodes_to_quantize=nodes, extra_options={"MatMulConstBOnly": True})
    return Path(destination)


def _candidates(outputs, inputs):
    """(A, P) final scores of the first image, as post-processing ranks them, and its (A, 4) boxes."""
    from glip_hf.postprocessing_glip import phrase_scores

    logits, boxes, centerness = (torch.from_numpy(array) for array in outputs)
    scores = phrase_scores(logits, inputs["token_maps"])[0]
    return (scores * centerness[0].sigmoid()[:, None]).sqrt(), boxes[0]


def compare(fp32_session, int8_session, inputs, image_size) -> dict:
    from torchvision.ops import box_iou

    from glip_hf.export_glip import pad_pixel_values

    feeds = {"pixel_values": pad_pixel_values(inputs["pixel_values"], image_size).numpy(),
             "input_ids": inputs["input_ids"].numpy(), "attention_mask": inputs["attention_mask"].numpy()}
    (exact, exact_boxes), (low, low_boxes) = (_candidates(session.run(None, feeds), inputs)
                                              for session in (fp32_session, int8_session))
    best = exact.flatten().topk(TOP_CANDIDATES).indices
    anchors, phrases = best // exact.shape[1], best % exact.shape[1]
    return {"min_iou": float(box_iou(exact_boxes[anchors], low_boxes[anchors]).diagonal().min()),
            "max_score_difference": float((exact[anchors, phrases] - low[anchors, phrases]).abs().max())}


def main(argv=None) -> dict:
    import onnxruntime
    from PIL import Image
    from safetensors.torch import load_file

    from glip_hf import GlipForGrounding, GlipProcessor
    from glip_hf.export_glip import export_onnx

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="the converted reference checkpoint's folder")
    parser.add_argument("--reference", type=Path,
                        default=Path(os.environ.get("GLIP_REFERENCE_DIR", "../shared/reference")) / "glip_tiny_random",
                        help="the fixture's folder (default: $GLIP_REFERENCE_DIR or ../shared/reference, then "
                             "glip_tiny_random)")
    parser.add_argument("--image-size", default="320x320", help="HxW the graph is exported for")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/onnx_int8_fixture.json"))
    args = parser.parse_args(argv)
    image_size = tuple(int(side) for side in args.image_size.split("x"))
    image = Image.fromarray(load_file(args.reference / "inputs.safetensors")["image_uint8_hwc_rgb"].numpy())
    captions = json.loads((args.reference / "inputs.json").read_text())["captions"]
    processor = GlipProcessor.from_pretrained(args.model)
    prompts = {"det": processor(images=image, text=captions["det"]["category_names"]),
               "grounding": processor(images=image, text=captions["grounding"]["caption"],
                                      phrases=captions["grounding"]["phrases"])}
    model = GlipForGrounding.from_pretrained(args.model).eval()
    results = {"image_size": args.image_size, "top_candidates": TOP_CANDIDATES, "groups": {}}
    with tempfile.TemporaryDirectory() as folder:
        print(f"exporting the fixture's detector at {args.image_size} ...", flush=True)
        fp32 = export_onnx(model, Path(folder) / "fp32.onnx", image_size=image_size, dynamic_image_size=False)
        fp32_session = onnxruntime.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
        for label, float_modules in GROUPS.items():
            int8 = int8_copy(fp32, Path(folder) / "int8.onnx", float_modules)
            int8_session = onnxruntime.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
            results["groups"][label] = {name: compare(fp32_session, int8_session, inputs, image_size)
                                        for name, inputs in prompts.items()}
    print(f"{'int8 layers':40s} {'caption':10s} {'min IoU':>8s} {'max score diff':>15s}")
    for label, captions_result in results["groups"].items():
        for name, figures in captions_result.items():
            print(f"{label:40s} {name:10s} {figures['min_iou']:8.3f} {figures['max_score_difference']:15.4f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
