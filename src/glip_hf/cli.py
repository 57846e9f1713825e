"""`glip-hf` command line: `glip-hf detect --model DIR --image PATH [PATH ...] --prompt "person. bicycle."`.

For every image it writes `<name>.png` with the boxes and phrases drawn and `<name>.json` with the detections,
under `--output-dir` at the image's path relative to the folder all images share (so `d1/x.png` and `d2/x.png`
give `d1/x.*` and `d2/x.*`). Nothing is written over an input or over a file `detect` did not write itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from . import cli_evaluate, cli_export, cli_label

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324", "#800000", "#000075"]
# Marks the pictures `detect` writes, so that a later run may replace them (and nothing else).
SOFTWARE_TAG = "glip-hf detect"


class CliError(Exception):
    """A user error: printed as one "error: ..." line, exit status 2."""


def threshold_value(text: str) -> float:
    """argparse type of --threshold: a finite number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="glip-hf", description="GLIP grounded detection.")
    parser.add_argument("--version", action="version", version=f"glip-hf {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    detect = commands.add_parser("detect", help="detect the prompt's phrases in images")
    detect.add_argument("--model", required=True, type=Path, help="folder saved with save_pretrained / the converter")
    detect.add_argument("--image", required=True, nargs="+", type=Path, help="image file(s)")
    detect.add_argument("--prompt", required=True,
                        help='phrases separated by ".", e.g. "person. bicycle." (each phrase is grounded)')
    detect.add_argument("--threshold", type=threshold_value, default=0.3,
                        help="minimum final score, in [0, 1] (default 0.3)")
    detect.add_argument("--output-dir", type=Path, default=Path("glip_detections"), help="where to write PNG + JSON")
    detect.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    cli_evaluate.add_parser(commands)
    cli_label.add_parser(commands)
    cli_export.add_parser(commands)
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


# ----- outputs -----------------------------------------------------------------------------------------------------

def output_stems(images: list[Path], output_dir: Path) -> list[Path]:
    """Per image, `output_dir / <path relative to the images' common folder>` without the last suffix.

    Raises `CliError` when an image is given twice or two images would write the same files (y.png and y.jpg).
    """
    resolved = [Path(os.path.abspath(path)) for path in images]
    seen = {}
    for path, original in zip(resolved, images):
        if path in seen:
            raise CliError(f"image {original} is given twice (also as {seen[path]})")
        seen[path] = original
    common = Path(os.path.commonpath([path.parent for path in resolved]))
    stems = [output_dir / path.parent.relative_to(common) / path.stem for path in resolved]
    claimed = {}
    for stem, original in zip(stems, images):
        key = os.path.normcase(os.path.abspath(stem)).casefold()  # case-insensitive file systems collide too
        if key in claimed:
            raise CliError(f"images {claimed[key]} and {original} would both write {stem}.png and {stem}.json; "
                           "rename one or run them separately")
        claimed[key] = original
    return stems


def output_paths(stem: Path) -> tuple[Path, Path]:
    # Appended, not `with_suffix`: the stem of "y.jpg.png" is "y.jpg", which must not become "y.png".
    return stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".json")


def _written_by_detect(path: Path) -> bool:
    from PIL import Image

    try:
        if path.suffix == ".json":
            content = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(content, dict) and {"image", "prompt", "detections"} <= set(content)
        with Image.open(path) as picture:
            if getattr(picture, "text", {}).get("Software") == SOFTWARE_TAG:
                return True
        sidecar = path.with_suffix(".json")  # a picture from before the tag, next to its detections
        return sidecar.is_file() and _written_by_detect(sidecar)
    except (OSError, ValueError):
        return False


def check_outputs(images: list[Path], stems: list[Path]) -> None:
    """Refuse before any work when an output would replace an input or a file `detect` did not write."""
    inputs = {Path(os.path.abspath(path)) for path in images}
    for stem in stems:
        for path in output_paths(stem):
            if Path(os.path.abspath(path)) in inputs:
                raise CliError(f"{path} would overwrite an input image; choose another --output-dir")
            if path.is_dir():
                raise CliError(f"{path} is a folder; choose another --output-dir")
            if path.exists() and not _written_by_detect(path):
                raise CliError(f"{path} exists and was not written by glip-hf detect; choose another --output-dir")


def _make_output_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise CliError(f"output folder {folder} cannot be created: a file is in the way") from None
    except OSError as error:
        raise CliError(f"output folder {folder} cannot be created: {error.strerror or error}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CliError(f"output folder {folder} is not writable")


def _replace_atomically(path: Path, write) -> None:
    """Write through a temporary file in the same folder, so a failed write leaves the old file intact."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# ----- pictures ----------------------------------------------------------------------------------------------------

def read_picture(path: Path):
    """The picture as the processor sees it: EXIF orientation applied, 16-bit and float data scaled to 8-bit RGB."""
    from .image_processing_glip import to_rgb_pil_image

    return to_rgb_pil_image(path)


def draw_detections(image, detections: list[dict]):
    """A copy of the RGB `image` with each box outlined and labelled "phrase score" (torchvision's drawing)."""
    import torch
    from torchvision.transforms.functional import pil_to_tensor, to_pil_image
    from torchvision.utils import draw_bounding_boxes

    pixels = pil_to_tensor(image.convert("RGB"))
    if not detections:
        return to_pil_image(pixels)
    boxes = torch.tensor([detection["box"] for detection in detections], dtype=torch.float32)
    drawn = draw_bounding_boxes(
        pixels, boxes, labels=[f"{d['label']} {d['score']:.2f}" for d in detections],
        colors=[PALETTE[d["label_id"] % len(PALETTE)] for d in detections],
        width=max(2, round(max(image.size) / 300)),
    )
    return to_pil_image(drawn)


def detections_to_json(result: dict) -> list[dict]:
    return [
        {"label": text, "label_id": int(label), "score": round(float(score), 6),
         "box": [round(float(v), 2) for v in box]}
        for text, label, score, box in zip(
            result["text_labels"], result["labels"].tolist(), result["scores"].tolist(), result["boxes"].tolist()
        )
    ]


# ----- running -----------------------------------------------------------------------------------------------------

def check_device(name: str) -> str:
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CliError(f"--device {name!r} is not a torch device (use e.g. cpu, cuda or cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name}: no CUDA GPU is available on this machine; use --device cpu")
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as error:
        raise CliError(f"--device {name} cannot be used: {str(error).splitlines()[0]}") from None
    return name


def _load(model_dir: Path, device: str):
    from .modeling_glip import GlipForGrounding
    from .processing_glip import GlipProcessor

    if not (model_dir / "config.json").is_file():
        raise CliError(f"{model_dir} is not a GLIP model folder (no config.json); convert a checkpoint first")
    try:
        model = GlipForGrounding.from_pretrained(model_dir).to(device).eval()
        processor = GlipProcessor.from_pretrained(model_dir)
    except Exception as error:  # noqa: BLE001 - a damaged folder can fail in any library; report it as the user's
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CliError(f"cannot load the model folder {model_dir}: {message}") from None
    return model, processor


def _detect_one(model, processor, image, args) -> list[dict]:
    import torch

    inputs = processor(images=image, text=args.prompt)
    with torch.no_grad():
        outputs = model(**inputs.to(args.device))
    result = processor.post_process_grounded_object_detection(outputs, inputs, threshold=args.threshold)[0]
    return detections_to_json(result)


def _write(path: Path, stem: Path, picture, detections: list[dict], args) -> Path:
    from PIL.PngImagePlugin import PngInfo

    png, json_path = output_paths(stem)
    _make_output_dir(png.parent)
    info = PngInfo()
    info.add_text("Software", SOFTWARE_TAG)
    drawn = draw_detections(picture, detections)
    _replace_atomically(png, lambda target: drawn.save(target, format="PNG", pnginfo=info))
    record = {"written_by": SOFTWARE_TAG, "image": str(path), "prompt": args.prompt, "threshold": args.threshold,
              "image_size": list(picture.size), "detections": detections}
    _replace_atomically(json_path, lambda target: target.write_text(json.dumps(record, indent=2), encoding="utf-8"))
    return png


def detect(args) -> int:
    from tqdm.auto import tqdm

    if not args.prompt.strip(" ."):
        raise CliError("the prompt is empty; give phrases such as \"person. bicycle.\"")
    check_device(args.device)
    stems = output_stems(args.image, args.output_dir)
    check_outputs(args.image, stems)
    _make_output_dir(args.output_dir)
    model, processor = _load(args.model, args.device)
    try:
        processor(text=args.prompt)  # a bad prompt fails once, before any image
    except (ValueError, TypeError) as error:
        raise CliError(f"prompt {args.prompt!r}: {error}") from None
    failures = []
    for path, stem in tqdm(list(zip(args.image, stems)), desc="detecting", unit="image", disable=len(stems) < 2):
        try:
            picture = read_picture(path)
            detections = _detect_one(model, processor, picture, args)
            png = _write(path, stem, picture, detections, args)
        except (ValueError, TypeError, OSError, CliError) as error:
            failures.append(path)
            print(f"error: {path}: {error}", file=sys.stderr)
            continue
        print(f"{path}: {len(detections)} detection(s) -> {png}")
    if failures:
        print(f"error: {len(failures)} of {len(stems)} image(s) failed: {', '.join(map(str, failures))}",
              file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "detect":
            return detect(args)
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command in cli_evaluate.COMMANDS:
        return cli_evaluate.run(args)
    if args.command == "label":
        return cli_label.run(args)
    if args.command == "export":
        return cli_export.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
