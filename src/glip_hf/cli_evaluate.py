"""`glip-hf evaluate` (inference plus scoring on a benchmark), `glip-hf score` (scoring of predictions already
made) and `glip-hf odinw-fewshot` (the original's k-shot training splits).

    glip-hf evaluate --model DIR --benchmark coco --annotations instances_val2017.json --images val2017/
    accelerate launch --num_processes 2 -m glip_hf.cli evaluate ...     # disjoint shards, gathered
    glip-hf score --benchmark lvis-fixed --ground-truth lvis_v1_minival.json --predictions results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COMMANDS = ("evaluate", "score", "odinw-fewshot")


def add_parser(subparsers) -> None:
    from .evaluation.benchmarks import BENCHMARKS, SCORED_BENCHMARKS
    from .evaluation.flickr_eval import PROTOCOLS
    from .evaluation.odinw import FEW_SHOT_COUNTS, FEW_SHOT_SEEDS, SUITES

    evaluate = subparsers.add_parser("evaluate", help="run a model on a benchmark and report its metrics")
    evaluate.add_argument("--model", required=True, type=Path, help="folder saved with save_pretrained / the converter")
    evaluate.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    evaluate.add_argument("--annotations", required=True, type=Path,
                          help="coco/lvis: annotation JSON; odinw: the ODinW root folder; flickr30k: the Flickr30k "
                               "Entities folder (Annotations/, Sentences/, split lists)")
    evaluate.add_argument("--images", type=Path,
                          help="image folder (odinw: default the ODinW root; paths of the datasets are relative)")
    evaluate.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    evaluate.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    evaluate.add_argument("--bf16", action="store_true", help="run the model under bf16 autocast")
    evaluate.add_argument("--odinw-suite", default="odinw_13", choices=SUITES)
    evaluate.add_argument("--datasets", nargs="+", help="odinw: only these datasets of the suite")
    evaluate.add_argument("--flickr-split", default="test", choices=("train", "val", "test"))
    _common(evaluate, PROTOCOLS)
    evaluate.add_argument("--save-predictions", type=Path,
                          help="also write the predictions (COCO/LVIS result JSON, MDETR's Flickr30k format; odinw: "
                               "one result list per dataset)")

    score = subparsers.add_parser("score", help="score predictions already made against a ground truth")
    score.add_argument("--benchmark", required=True, choices=SCORED_BENCHMARKS)
    score.add_argument("--ground-truth", required=True, type=Path,
                       help="annotation JSON (coco, lvis); the Flickr30k Entities folder (flickr30k)")
    score.add_argument("--predictions", required=True, type=Path, help="result JSON")
    score.add_argument("--flickr-split", default="test", choices=("train", "val", "test"))
    _common(score, PROTOCOLS)

    fewshot = subparsers.add_parser("odinw-fewshot", help="write k-shot subsets of a COCO training file")
    fewshot.add_argument("--annotations", required=True, type=Path, help="the full training annotation JSON")
    fewshot.add_argument("--output-dir", required=True, type=Path)
    fewshot.add_argument("--shots", type=int, nargs="+", default=list(FEW_SHOT_COUNTS))
    fewshot.add_argument("--seeds", type=int, nargs="+", default=list(FEW_SHOT_SEEDS))


def _common(parser, protocols) -> None:
    parser.add_argument("--flickr-protocol", default="any", choices=protocols,
                        help="any: a hit on any of the phrase's boxes; merged: on the box enclosing them all")
    parser.add_argument("--output", type=Path, help="also write the metrics JSON here (not overwritten)")


def _refuse_existing(*paths) -> None:
    for path in paths:
        if path is not None and path.exists():
            raise ValueError(f"{path} already exists; remove it or choose another --output path")


def _write(path: Path | None, data) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))


def _load(model_dir: Path, device: str):
    from .modeling_glip import GlipForGrounding
    from .processing_glip import GlipProcessor

    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir} is not a GLIP model folder (no config.json); convert a checkpoint first")
    model = GlipForGrounding.from_pretrained(model_dir).to(device).eval()
    return model, GlipProcessor.from_pretrained(model_dir)


def _device(requested: str) -> str:
    import torch

    from .evaluation.runner import process_state

    try:
        kind = torch.device(requested).type
    except RuntimeError:
        raise ValueError(f"--device {requested!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {requested}: CUDA is not available on this machine")
    _, world_size = process_state(requested)
    if requested == "cuda" and world_size > 1:
        from accelerate import PartialState

        return str(PartialState().device)  # one GPU per process
    return requested


def run_evaluate(args) -> tuple[dict, object]:
    from .evaluation import benchmarks

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.benchmark != "odinw" and args.images is None:
        raise ValueError(f"--images is required for {args.benchmark}")
    if not args.annotations.exists():
        raise ValueError(f"--annotations {args.annotations} does not exist")
    device = _device(args.device)
    model, processor = _load(args.model, device)
    options = {"batch_size": args.batch_size, "device": device, "bf16": args.bf16}
    if args.benchmark == "odinw":
        return benchmarks.evaluate_odinw(model, processor, args.annotations, args.odinw_suite, args.datasets,
                                         **options)
    if args.benchmark == "flickr30k":
        return benchmarks.evaluate_flickr(model, processor, args.annotations, args.images, args.flickr_split,
                                          args.flickr_protocol, **options)
    return benchmarks.evaluate_detection(model, processor, args.annotations, args.images, args.benchmark,
                                         **options)


def run(args) -> int:
    from .evaluation.runner import process_state

    try:
        if args.command == "odinw-fewshot":
            from .evaluation.odinw import write_few_shot_splits

            for path in write_few_shot_splits(args.annotations, args.output_dir, args.shots, args.seeds):
                print(path)
            return 0
        _refuse_existing(args.output, getattr(args, "save_predictions", None))
        if args.command == "score":
            from .evaluation.benchmarks import score_predictions

            metrics, predictions = score_predictions(args.benchmark, args.ground_truth, args.predictions,
                                                     args.flickr_protocol, args.flickr_split), None
        else:
            metrics, predictions = run_evaluate(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if process_state()[0] == 0:
        _write(args.output, metrics)
        if predictions is not None:
            _write(getattr(args, "save_predictions", None), predictions)
        print(json.dumps(metrics))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="glip-hf")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
