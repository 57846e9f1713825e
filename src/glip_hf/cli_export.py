"""`glip-hf export --model DIR --output OUT [--format onnx|torch-export] [--opset N] [--dtype fp32|fp16|bf16]
[--image-size HxW] [--static-image-size] [--cached-prompt]`.

ONNX: OUT is the detector's file (inputs pixel_values, input_ids, attention_mask; outputs logits, pred_boxes,
centerness), for any batch, text length and image size (multiples of 32 from 256 to 4096 per side). `--image-size`
is the size of the example traced, and with `--static-image-size` the only size the graph takes. With
`--cached-prompt`, two more files next to it: `<stem>.text_encoder.onnx` (input_ids, attention_mask ->
text_features) and `<stem>.cached_prompt.onnx` (pixel_values, text_features, attention_mask). `--format
torch-export` writes the same graphs as `torch.export.save` archives (`.pt2`); `--dtype bf16` needs it (ONNX Runtime
cannot load a bf16 graph).
"""

from __future__ import annotations

from pathlib import Path

FORMATS = ("onnx", "torch-export")


def add_parser(subparsers) -> None:
    export = subparsers.add_parser("export", help="export a model to ONNX or torch.export")
    export.add_argument("--model", required=True, type=Path, help="folder saved with save_pretrained / the converter")
    export.add_argument("--output", required=True, type=Path, help="file to write (.onnx, or .pt2 for torch-export)")
    export.add_argument("--format", default="onnx", choices=FORMATS, help="onnx (default) or torch-export")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18; at least 16, GridSample)")
    export.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"),
                        help="weights and activations (bf16 with --format torch-export only)")
    export.add_argument("--image-size", default="800x1344",
                        help="HxW of the example image traced (default 800x1344); the graph takes any HxW in "
                             "multiples of 32 from 256 to 4096")
    export.add_argument("--static-image-size", action="store_true",
                        help="a graph for the --image-size only (exports about 3x faster; sides from 128)")
    export.add_argument("--cached-prompt", action="store_true",
                        help="also write the text encoder and the detector that takes its text_features")
    export.add_argument("--overwrite", action="store_true", help="replace existing output files")


def _outputs(args) -> dict[str, Path]:
    paths = {"detector": args.output}
    if args.cached_prompt:
        suffix = args.output.suffix or (".onnx" if args.format == "onnx" else ".pt2")
        stem = args.output.with_suffix("")
        paths["text_encoder"] = Path(f"{stem}.text_encoder{suffix}")
        paths["cached_prompt"] = Path(f"{stem}.cached_prompt{suffix}")
    return paths


def _refuse_bad_options(args, opset: int) -> None:
    from .export_glip import BF16_ONNX_REASON, MIN_OPSET

    if not (args.model / "config.json").is_file():
        raise SystemExit(f"error: {args.model} is not a GLIP model folder (no config.json); convert a checkpoint first")
    if args.format == "onnx" and opset < MIN_OPSET:
        raise SystemExit(f"error: --opset {opset} is too old: ONNX GridSample needs at least {MIN_OPSET}")
    if args.format != "onnx" and args.opset is not None:
        raise SystemExit("error: --opset applies to --format onnx only")
    if args.format == "onnx" and args.dtype == "bf16":
        raise SystemExit(f"error: --dtype bf16 needs --format torch-export ({BF16_ONNX_REASON}); --dtype fp16 "
                         "exports to ONNX")


def _image_size(args, dynamic: bool) -> tuple[int, int]:
    from .export_glip import MAX_IMAGE_SIDE, check_image_size, min_image_side

    minimum = min_image_side(dynamic)
    try:
        height, _, width = args.image_size.partition("x")
        return check_image_size((int(height), int(width or height)), minimum)
    except ValueError:
        raise SystemExit(
            f"error: --image-size must be HxW in multiples of 32 from {minimum} to {MAX_IMAGE_SIDE}, got "
            f"{args.image_size!r}") from None


def _write(model, kind: str, path: Path, args, image_size, opset: int, dynamic: bool) -> None:
    import torch

    from .export_glip import DTYPES, export_onnx, export_program

    if args.format == "torch-export":
        program = export_program(model, kind, image_size, DTYPES[args.dtype], dynamic_image_size=dynamic)
        torch.export.save(program, str(path))
    else:
        export_onnx(model, path, kind, image_size, opset=opset, dtype=DTYPES[args.dtype], dynamic_image_size=dynamic)


def run(args) -> int:
    from .export_glip import DEFAULT_OPSET
    from .modeling_glip import GlipForGrounding

    opset = DEFAULT_OPSET if args.opset is None else args.opset
    _refuse_bad_options(args, opset)
    dynamic = not args.static_image_size
    image_size = _image_size(args, dynamic)
    paths = _outputs(args)
    existing = [str(path) for path in paths.values() if path.exists()]
    if existing and not args.overwrite:
        raise SystemExit(f"error: {', '.join(existing)} already exist(s); pass --overwrite to replace")
    if not args.output.parent.is_dir():
        raise SystemExit(f"error: the folder of {args.output} does not exist")
    model = GlipForGrounding.from_pretrained(args.model).eval()
    for kind, path in paths.items():
        _write(model, kind, path, args, image_size, opset, dynamic)
        print(f"{kind}: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0
