"""GLIP as deployable graphs: ONNX (run by ONNX Runtime, standard operators only) and torch.export programs.

The exported detector takes `pixel_values` (B, 3, H, W), `input_ids` (B, T) and `attention_mask` (B, T), and
returns `logits` (B, A, T), `pred_boxes` (B, A, 4) and `centerness` (B, A) as `GlipForGrounding` does. Batch, text
length and the image size are dynamic: one graph takes any H and W that are multiples of 32 from MIN_IMAGE_SIDE to
MAX_IMAGE_SIDE, as GlipImageProcessor pads to. For that, tracing swaps transformers' Swin layer forward for
`swin_layer_forward_any_size`, the same arithmetic with shape-independent control flow. A second pair of graphs
runs a prompt once: the text encoder (`input_ids`, `attention_mask` -> `text_features`) and the detector that takes
`text_features` in place of `input_ids`. `post_process_exported` turns the outputs into detections without the
PyTorch model.

Tracing runs on the CPU: the deformable convs go through their `grid_sample` form (ONNX `GridSample`, opset >= 16),
never through torchvision's kernel or Triton.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.models.swin import modeling_swin

from .postprocessing_glip import phrase_scores, post_process_grounding

DETECTOR_INPUTS = ("pixel_values", "input_ids", "attention_mask")
CACHED_PROMPT_INPUTS = ("pixel_values", "text_features", "attention_mask")
TEXT_ENCODER_INPUTS = ("input_ids", "attention_mask")
DETECTOR_OUTPUTS = ("logits", "pred_boxes", "centerness")
TEXT_ENCODER_OUTPUTS = ("text_features",)
# ONNX's GridSample arrived in opset 16; the exporter's own default is newer.
MIN_OPSET = 16
DEFAULT_OPSET = 18
IMAGE_MULTIPLE = 32
# The dynamic image sides of an exported detector (multiples of IMAGE_MULTIPLE).
MIN_IMAGE_SIDE = 256
# A graph of one size (`dynamic_image_size=False`) may be smaller: GLIP's coarsest level has stride 128.
MIN_STATIC_IMAGE_SIDE = 128
MAX_IMAGE_SIDE = 4096
# GlipImageProcessor's default: shorter side 800, longer at most 1333, padded to multiples of 32.
DEFAULT_IMAGE_SIZE = (800, 1344)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Why bf16 stays out of ONNX: some ops these graphs use have no bfloat16 form there (checked with opsets 18 and 22).
BF16_ONNX_REASON = "ONNX's Conv (before opset 22) and SplitToSequence take no bfloat16; ONNX Runtime refuses the file"


class GlipDetectorForExport(nn.Module):
    """`GlipForGrounding` with tensors in and out: (pixel_values, input_ids or text_features, attention_mask) ->
    (logits, pred_boxes, centerness)."""

    def __init__(self, model, cached_prompt: bool = False):
        super().__init__()
        self.model = model
        self.cached_prompt = cached_prompt

    def forward(self, pixel_values, text, attention_mask):
        text_inputs = {"text_features" if self.cached_prompt else "input_ids": text}
        outputs = self.model.model(pixel_values, attention_mask=attention_mask, **text_inputs)
        logits, box_regression, centerness = self.model.head(outputs.vision_features, outputs.text_features)
        first = outputs.vision_features[0]
        sizes = [feature.shape[-2:] for feature in outputs.vision_features]  # symbolic in a graph of any size
        anchors = torch.cat(self.model.anchor_generator.grids(sizes, first.device, first.dtype))
        pred_boxes = self.model.box_coder.decode(box_regression, anchors[None].to(box_regression.dtype))
        return logits, pred_boxes, centerness


class GlipTextEncoderForExport(nn.Module):
    """The prompt step: (input_ids, attention_mask) -> text_features, as `GlipForGrounding.encode_prompt`."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.encode_prompt(input_ids, attention_mask)


def swin_layer_forward_any_size(layer, hidden_states, input_dimensions, always_partition=False, **kwargs):
    """transformers' `SwinLayer.forward`, with the same arithmetic, for a graph of any image size.

    The layer pads its (height, width) map to whole windows and crops the padding off again. Its own code tests
    whether it padded, and slices; the slice's contiguity depends on the padding. torch.export would fix both
    per example size. Here the padded size is a ceiling division and the crop an `index_select`, whose result
    is contiguous for every size.
    """
    if not always_partition:
        layer.set_shift_and_window_size(input_dimensions)
    height, width = input_dimensions
    batch_size, _, channels = hidden_states.shape
    window = layer.window_size
    padded_height = (height + window - 1) // window * window
    padded_width = (width + window - 1) // window * window
    shortcut = hidden_states
    hidden_states = layer.layernorm_before(hidden_states).view(batch_size, height, width, channels)
    hidden_states = F.pad(hidden_states, (0, 0, 0, padded_width - width, 0, padded_height - height))
    windows = modeling_swin.window_partition(layer.cyclic_shift(hidden_states), window)
    attention_mask = layer.get_attn_mask(padded_height, padded_width, dtype=hidden_states.dtype,
                                         device=hidden_states.device)
    attention, attention_weights = layer.attention(windows.view(-1, window * window, channels), attention_mask,
                                                   **kwargs)
    attention = layer.dropout(attention).view(-1, window, window, channels)
    attention = modeling_swin.window_reverse(attention, window, padded_height, padded_width)
    attention = layer.cyclic_shift(attention, reverse=True)
    rows = torch.arange(height, device=attention.device)
    columns = torch.arange(width, device=attention.device)
    attention = attention.index_select(1, rows).index_select(2, columns).view(batch_size, height * width, channels)
    hidden_states = shortcut + layer.drop_path(attention)
    hidden_states = hidden_states + layer.dropout(layer.mlp(layer.layernorm_after(hidden_states)))
    return hidden_states, attention_weights


@contextlib.contextmanager
def any_image_size(model):
    """Inside the block, the model's transformers Swin layers run `swin_layer_forward_any_size`."""
    layers = [module for module in model.modules() if isinstance(module, modeling_swin.SwinLayer)]
    for layer in layers:
        layer.forward = swin_layer_forward_any_size.__get__(layer)
    try:
        yield model
    finally:
        for layer in layers:
            del layer.forward


@contextlib.contextmanager
def export_mode(model, eager_attention: bool = False):
    """Settings for tracing, restored afterwards: the Swin layers of `any_image_size`; every prompt row in one
    DyHead pass (the CPU's rows-per-pass rule is a loop over the batch, which a graph with a dynamic batch cannot
    hold); and with `eager_attention` every attention (towers, fusion, the DyHead's BERT layers) as plain products
    and softmax (the ONNX exporter's decomposition of `scaled_dot_product_attention` leaves a view of a transposed
    tensor that it then cannot run)."""
    config = model.config
    saved_rows = config.max_prompts_per_pass
    # GLIP's own config decides its fusion and DyHead text layers ("eager": the original's arithmetic).
    sub_configs = [module.config for module in model.modules() if isinstance(module, PreTrainedModel)]
    sub_configs = list({id(sub): sub for sub in sub_configs}.values()) if eager_attention else []
    saved_attention = [sub._attn_implementation for sub in sub_configs]
    config.max_prompts_per_pass = 2**31 - 1
    for sub in sub_configs:
        sub._attn_implementation = "eager"
    try:
        with any_image_size(model):
            yield model
    finally:
        config.max_prompts_per_pass = saved_rows
        for sub, implementation in zip(sub_configs, saved_attention):
            sub._attn_implementation = implementation


def example_inputs(config, image_size=DEFAULT_IMAGE_SIZE, batch: int = 1, text_length: int = 8,
                   dtype=torch.float32) -> dict:
    """Random inputs of the detector's signature for (height, width) images."""
    height, width = check_image_size(image_size, MIN_STATIC_IMAGE_SIDE)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, 2000, (batch, text_length), generator=generator) % config.text_config.vocab_size
    return {
        "pixel_values": torch.randn(batch, 3, height, width, generator=generator).to(dtype),
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
    }


def min_image_side(dynamic_image_size: bool = True) -> int:
    """The smallest image side of an exported detector: of a graph of any size, or of one of a single size."""
    return MIN_IMAGE_SIDE if dynamic_image_size else MIN_STATIC_IMAGE_SIDE


def check_image_size(image_size, minimum: int = MIN_IMAGE_SIDE) -> tuple[int, int]:
    """(height, width) of an exported detector's images: multiples of 32 (as GlipImageProcessor pads to) from
    `minimum` (MIN_IMAGE_SIDE for a graph of any size, MIN_STATIC_IMAGE_SIDE for one size) to MAX_IMAGE_SIDE."""
    height, width = (int(side) for side in image_size)
    if (height % IMAGE_MULTIPLE or width % IMAGE_MULTIPLE or min(height, width) < minimum
            or max(height, width) > MAX_IMAGE_SIDE):
        raise ValueError(f"image_size must be (height, width) in multiples of {IMAGE_MULTIPLE} from {minimum} "
                         f"to {MAX_IMAGE_SIDE}, got {tuple(image_size)}")
    return height, width


def pad_pixel_values(pixel_values: torch.Tensor, image_size) -> torch.Tensor:
    """Zero-pads a processor's (B, 3, h, w) `pixel_values` at the bottom/right to (height, width): images of a
    processor's size below MIN_IMAGE_SIDE, or several batches at one size."""
    height, width = check_image_size(image_size, MIN_STATIC_IMAGE_SIDE)
    if pixel_values.shape[-2] > height or pixel_values.shape[-1] > width:
        raise ValueError(f"pixel_values of size {tuple(pixel_values.shape[-2:])} do not fit in {(height, width)}; "
                         f"pad to a larger size or resize the images (GlipImageProcessor size=)")
    return F.pad(pixel_values, (0, width - pixel_values.shape[-1], 0, height - pixel_values.shape[-2]))


def dynamic_shapes(config, names, dynamic_image_size: bool = True) -> dict:
    """torch.export dynamic shapes for the named inputs: batch, text length and, with `dynamic_image_size`, image
    height and width in multiples of 32 from MIN_IMAGE_SIDE to MAX_IMAGE_SIDE."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    text_length = torch.export.Dim("text_length", min=1, max=config.max_text_len)
    height, width = (IMAGE_MULTIPLE * torch.export.Dim(f"{side}_in_32s", min=MIN_IMAGE_SIDE // IMAGE_MULTIPLE,
                                                      max=MAX_IMAGE_SIDE // IMAGE_MULTIPLE)
                     for side in ("height", "width"))
    shapes = {
        "pixel_values": {0: batch, 2: height, 3: width} if dynamic_image_size else {0: batch},
        "input_ids": {0: batch, 1: text_length},
        "text_features": {0: batch, 1: text_length},
        "attention_mask": {0: batch, 1: text_length},
    }
    return {name: shapes[name] for name in names}


def _exportable(model, dtype):
    if model.training:
        raise ValueError("export a model in eval mode (model.eval()): training behaviour (dropout) would be traced")
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return model.to("cpu", dtype=dtype)


def export_program(model, kind: str = "detector", image_size=None, dtype=torch.float32,
                   example: dict | None = None, eager_attention: bool = False, dynamic_image_size: bool = True):
    """torch.export's `ExportedProgram` of one graph: "detector" (DETECTOR_INPUTS), "cached_prompt"
    (CACHED_PROMPT_INPUTS) or "text_encoder" (TEXT_ENCODER_INPUTS), with dynamic batch, text length and image size
    (see `check_image_size`). It traces `example` (the detector's inputs), or random inputs of `image_size`
    (default DEFAULT_IMAGE_SIZE); `eager_attention`: see `export_mode`. With `dynamic_image_size=False` the graph
    takes the traced size only, and traces in about a third of the time. The model is moved to the CPU in `dtype`
    (in place, as `model.to`)."""
    model = _exportable(model, dtype)
    example = example or example_inputs(model.config, image_size or DEFAULT_IMAGE_SIZE, dtype=dtype)
    traced_size = check_image_size(example["pixel_values"].shape[-2:], min_image_side(dynamic_image_size))
    if image_size is not None and traced_size != tuple(image_size):
        raise ValueError(f"the example's pixel_values are {traced_size}, not the image_size {tuple(image_size)}")
    if example["pixel_values"].shape[0] == 1:
        # torch.export takes a size of 1 for a constant: trace a batch of two for a graph of any batch.
        example = {name: torch.cat([tensor, tensor]) for name, tensor in example.items()}
    if kind == "text_encoder":
        module, names = GlipTextEncoderForExport(model), TEXT_ENCODER_INPUTS
    elif kind in ("detector", "cached_prompt"):
        cached = kind == "cached_prompt"
        module, names = GlipDetectorForExport(model, cached), CACHED_PROMPT_INPUTS if cached else DETECTOR_INPUTS
        if cached and "text_features" not in example:
            with torch.no_grad():
                example = {**example, "text_features": model.encode_prompt(example["input_ids"],
                                                                          example["attention_mask"])}
    else:
        raise ValueError(f"kind must be 'detector', 'cached_prompt' or 'text_encoder', got {kind!r}")
    args = tuple(example[name] for name in names)
    with export_mode(model, eager_attention), torch.no_grad():
        shapes = dynamic_shapes(model.config, names, dynamic_image_size)
        return torch.export.export(module, args, dynamic_shapes=tuple(shapes.values()), strict=False)


def export_onnx(model, path, kind: str = "detector", image_size=None, opset: int = DEFAULT_OPSET,
                dtype=torch.float32, example: dict | None = None, dynamic_image_size: bool = True) -> Path:
    """Writes one graph (see `export_program`) as an ONNX file at `path`, with named inputs and outputs."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be at least {MIN_OPSET} (ONNX GridSample), got {opset}")
    if dtype == torch.bfloat16:
        raise ValueError(f"bf16 graphs export with export_program (torch.export) only: {BF16_ONNX_REASON}; fp16 "
                         "exports to ONNX")
    program = export_program(model, kind, image_size, dtype, example, eager_attention=True,
                             dynamic_image_size=dynamic_image_size)
    return program_to_onnx(program, path, kind, opset)


def program_to_onnx(program, path, kind: str = "detector", opset: int = DEFAULT_OPSET) -> Path:
    """Writes an `export_program(..., eager_attention=True)` result of that `kind` as an ONNX file at `path`."""
    names = {"text_encoder": TEXT_ENCODER_INPUTS, "cached_prompt": CACHED_PROMPT_INPUTS}.get(kind, DETECTOR_INPUTS)
    outputs = TEXT_ENCODER_OUTPUTS if kind == "text_encoder" else DETECTOR_OUTPUTS
    onnx_program = torch.onnx.export(program, input_names=list(names), output_names=list(outputs), opset_version=opset,
                                     dynamo=True, external_data=False, verbose=False,
                                     optimize=False)
    path = Path(path)
    onnx_program.save(str(path))
    return path


def post_process_exported(logits, pred_boxes, centerness, token_maps, image_sizes, input_size, target_sizes=None,
                          anchor_strides=(8, 16, 32, 64, 128), candidate_threshold: float = 0.05,
                          **kwargs) -> list[dict]:
    """Detections from an exported graph's outputs (numpy arrays or tensors), without the PyTorch model.

    token_maps (B, P, T) and image_sizes (B, 2) are the processor's `token_maps` and `image_sizes`, input_size the
    (H, W) of the `pixel_values` the graph ran on. Keyword arguments go to `post_process_grounding`. Returns per
    image `scores`, `labels` (phrase index) and `boxes` (xyxy, in `target_sizes` when given) as tensors.
    """
    logits, pred_boxes, centerness = (torch.as_tensor(array).float() for array in (logits, pred_boxes, centerness))
    spatial_shapes = level_shapes(*input_size, anchor_strides)
    if int(spatial_shapes.prod(1).sum()) != logits.shape[1]:
        raise ValueError(f"the outputs have {logits.shape[1]} anchors, not those of a {tuple(input_size)} input")
    scores = phrase_scores(logits, torch.as_tensor(token_maps))
    return post_process_grounding(scores, centerness, pred_boxes, spatial_shapes, torch.as_tensor(image_sizes),
                                  target_sizes, candidate_threshold=candidate_threshold, **kwargs)


def level_shapes(height: int, width: int, strides=(8, 16, 32, 64, 128)) -> torch.Tensor:
    """(L, 2) sizes of the pyramid levels of an (height, width) input: P6 and P7 are stride-2 convs with padding 1,
    so every level rounds up."""
    return torch.tensor([(-(-int(height) // stride), -(-int(width) // stride)) for stride in strides])


__all__ = [
    "GlipDetectorForExport",
    "GlipTextEncoderForExport",
    "export_onnx",
    "export_program",
    "level_shapes",
    "pad_pixel_values",
    "post_process_exported",
    "program_to_onnx",
]
