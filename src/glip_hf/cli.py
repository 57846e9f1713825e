"""`glip-hf` command line: `glip-hf detect --model DIR --image PATH [PATH ...] --prompt "person. bicycle."`.

For every image it writes `<name>.png` with the boxes and phrases drawn and `<name>.json` with the detections.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import cli_export

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324", "#800000", "#000075"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="glip-hf", description="GLIP grounded detection.")
    commands = parser.add_subparsers(dest="command", required=True)
    detect = commands.add_parser("detect", help="detect the prompt's phrases in images")
    detect.add_argument("--model", required=True, type=Path, help="folder saved with save_pretrained / the converter")
    detect.add_argument("--image", required=True, nargs="+", type=Path, help="image file(s)")
    detect.add_argument("--prompt", required=True,
                        help='phrases separated by ".", e.g. "person. bicycle." (each phrase is grounded)')
    detect.add_argument("--threshold", type=float, default=0.3, help="minimum final score (default 0.3)")
    detect.add_argument("--output-dir", type=Path, default=Path("glip_detections"), help="where to write PNG + JSON")
    detect.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    cli_export.add_parser(commands)
    return parser.parse_args(argv)


def draw_detections(image, detections: list[dict]):
    """A copy of `image` with each box outlined and labelled "phrase score"."""
    from PIL import ImageDraw

    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 300))
    for detection in detections:
        colour = PALETTE[detection["label_id"] % len(PALETTE)]
        x1, y1, x2, y2 = detection["box"]
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        caption = f"{detection['label']} {detection['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), caption)
        draw.rectangle((left, top - (bottom - top) - 2, right + 4, top), fill=colour)
        draw.text((x1 + 2, top - (bottom - top) - 2), caption, fill="white")
    return canvas


def detections_to_json(result: dict) -> list[dict]:
    return [
        {"label": text, "label_id": int(label), "score": round(float(score), 6),
         "box": [round(float(v), 2) for v in box]}
        for text, label, score, box in zip(
            result["text_labels"], result["labels"].tolist(), result["scores"].tolist(), result["boxes"].tolist()
        )
    ]


def _load(model_dir: Path, device: str):
    from .modeling_glip import GlipForGrounding
    from .processing_glip import GlipProcessor

    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"error: {model_dir} is not a GLIP model folder (no config.json); convert a checkpoint first")
    model = GlipForGrounding.from_pretrained(model_dir).to(device).eval()
    processor = GlipProcessor.from_pretrained(model_dir)
    return model, processor


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise SystemExit(f"error: cannot read image {path}: {error}") from None


def detect(args) -> int:
    import torch
    from tqdm.auto import tqdm

    if not args.prompt.strip(" ."):
        raise SystemExit("error: the prompt is empty; give phrases such as \"person. bicycle.\"")
    model, processor = _load(args.model, args.device)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for path in tqdm(args.image, desc="detecting", unit="image", disable=len(args.image) < 2):
        image = _open_image(path)
        inputs = processor(images=image, text=args.prompt)
        with torch.no_grad():
            outputs = model(**{k: v.to(args.device) if hasattr(v, "to") else v for k, v in inputs.items()})
        result = processor.post_process_grounded_object_detection(outputs, inputs, threshold=args.threshold)[0]
        detections = detections_to_json(result)
        stem = args.output_dir / path.stem
        draw_detections(image, detections).save(stem.with_suffix(".png"))
        stem.with_suffix(".json").write_text(json.dumps(
            {"image": str(path), "prompt": args.prompt, "threshold": args.threshold, "detections": detections},
            indent=2,
        ))
        print(f"{path}: {len(detections)} detection(s) -> {stem.with_suffix('.png')}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "detect":
        return detect(args)
    if args.command == "export":
        return cli_export.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
