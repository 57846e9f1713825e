"""`glip-hf label`: a GLIP teacher labels a folder of images or a `datasets` dataset into ODVG / COCO files.

    glip-hf label --model DIR --images FOLDER --classes "person. bicycle. car" --output labels/ [--threshold 0.5]
    glip-hf label --model DIR --dataset PATH_OR_NAME --split train --caption-column caption --output labels/
    accelerate launch --multi_gpu --num_processes 2 -m glip_hf.cli label ...   # disjoint shards per process
"""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("label", help="pseudo-label a corpus of images with a GLIP teacher")
    parser.add_argument("--model", required=True, type=Path, help="folder saved with save_pretrained / the converter")
    corpus = parser.add_mutually_exclusive_group(required=True)
    corpus.add_argument("--images", type=Path, help="folder tree of images (read recursively, sorted by path)")
    corpus.add_argument("--dataset", help="datasets dataset: a local folder (imagefolder, parquet, ...), a file, or a name")
    parser.add_argument("--split", default="train", help="dataset split (default train)")
    parser.add_argument("--image-column", default="image", help="dataset column holding the images (default image)")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--classes", help='class names separated by ".", e.g. "person. bicycle. car"')
    prompt.add_argument("--classes-file", type=Path, help="file with one class name per line")
    prompt.add_argument("--caption-column", help="dataset column of captions: their noun phrases are grounded")
    parser.add_argument("--noun-phrases", default="perceptron", help="noun-phrase backend for captions")
    parser.add_argument("--output", required=True, type=Path, help="output folder (new, or a run's to resume)")
    thresholds = parser.add_mutually_exclusive_group()
    thresholds.add_argument("--threshold", type=float, default=0.5, help="minimum box score (default 0.5)")
    thresholds.add_argument("--thresholds-file", type=Path,
                            help='JSON {"class name": threshold, ...}; "default" sets the others (else 0.5)')
    parser.add_argument("--nms", type=float, default=0.6, help="class-aware NMS IoU (default 0.6, the original's)")
    parser.add_argument("--class-agnostic-nms", type=float, help="also suppress boxes of other classes above this IoU")
    parser.add_argument("--max-boxes", type=int, default=100, help="boxes kept per image (default 100)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=1000, help="images per output shard (default 1000)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (each process takes its LOCAL_RANK)")
    parser.add_argument("--bf16", action="store_true", help="run the model under bfloat16 autocast")


def _fail(message: str):
    raise SystemExit(f"error: {message}")


def read_classes(args) -> list[str] | None:
    if args.caption_column:
        return None
    if args.classes_file is not None:
        try:
            text = args.classes_file.read_text()
        except OSError as error:
            _fail(f"cannot read --classes-file {args.classes_file}: {error}")
        names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        names = [name.strip() for name in args.classes.split(".") if name.strip()]
    if not names:
        _fail("no class name given; write them as \"person. bicycle. car\"")
    return names


def read_policy(args):
    from .labelling_policy_glip import LabelPolicy

    threshold, per_class = args.threshold, {}
    if args.thresholds_file is not None:
        try:
            per_class = json.loads(args.thresholds_file.read_text())
        except (OSError, json.JSONDecodeError) as error:
            _fail(f"cannot read --thresholds-file {args.thresholds_file}: {error}")
        if not isinstance(per_class, dict) or not all(isinstance(v, (int, float)) for v in per_class.values()):
            _fail(f"--thresholds-file {args.thresholds_file} must hold a JSON object of class name -> number")
        threshold = float(per_class.pop("default", 0.5))
    return LabelPolicy(threshold=threshold, class_thresholds={k: float(v) for k, v in per_class.items()},
                       nms_threshold=args.nms, max_boxes_per_image=args.max_boxes,
                       class_agnostic_nms=args.class_agnostic_nms)


def _device(requested: str) -> str:
    import os

    if requested == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return requested


def run(args) -> int:
    from .labelling_glip import label
    from .modeling_glip import GlipForGrounding
    from .processing_glip import GlipProcessor

    if args.caption_column and args.images is not None:
        _fail("--caption-column needs --dataset (a folder of images has no captions)")
    if not (args.model / "config.json").is_file():
        _fail(f"{args.model} is not a GLIP model folder (no config.json); convert a checkpoint first")
    try:
        classes, policy = read_classes(args), read_policy(args)
        device = _device(args.device)
        model = GlipForGrounding.from_pretrained(args.model).to(device).eval()
        processor = GlipProcessor.from_pretrained(args.model)
        summary = label(model, processor, args.output, images=args.images, dataset=args.dataset, split=args.split,
                        image_column=args.image_column, classes=classes, caption_column=args.caption_column,
                        policy=policy, batch_size=args.batch_size, shard_size=args.shard_size, device=device,
                        bf16=args.bf16, extractor=args.noun_phrases)
    except (ValueError, TypeError, ImportError, FileNotFoundError) as error:
        _fail(str(error))
    print(f"labelled {summary.labelled} image(s) ({summary.boxes} boxes), skipped {summary.skipped} already "
          f"labelled, failed {summary.failed} (see {args.output / 'errors.jsonl'})")
    if summary.finalised:
        print(f"labels: {args.output / 'labels.odvg.jsonl'}" + (
            f", {args.output / 'coco.json'}" if classes is not None else ""))
    return 0
