"""Convert a released GLIP checkpoint (original `.pth` + its YAML) into a transformers-style folder.

    python convert/convert_glip_to_hf.py --checkpoint glip_tiny_model_o365_goldg.pth \
        --config glip_Swin_T_O365_GoldG.yaml --output-dir glip-t [--text-config bert_config.json] \
        [--tokenizer TOKENIZER_DIR] [--push-to-hub user/glip-t]

The output folder is a complete checkpoint: weights, config, image-processor and tokenizer files, so that
`GlipProcessor.from_pretrained(DIR)` and `pipeline("zero-shot-object-detection", model=DIR)` work on it. The
architecture comes from the YAML (merged over the original's defaults) and the BERT config; nothing is
hard-wired to a size. The first convolution is flipped so the converted model takes RGB images normalised with the
ImageNet mean/std on a 0-1 scale.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from transformers import BertConfig

from glip_hf.conversion_glip import ConversionError, convert_checkpoint, load_original_yaml, processor_from_original


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="original .pth (reads its 'model' entry)")
    parser.add_argument("--config", required=True, type=Path, help="the original YAML released with it")
    parser.add_argument("--output-dir", required=True, type=Path, help="folder to write (save_pretrained)")
    parser.add_argument("--text-config", type=Path, help="BERT config json (default: bert-base-uncased dims)")
    parser.add_argument("--tokenizer", type=Path,
                        help="tokenizer folder or vocab.txt (default: the bundled bert-base-uncased vocabulary)")
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this Hub repository")
    return parser.parse_args(argv)


def read_text_config(path: Path) -> BertConfig:
    """The BERT config JSON, or a `ValueError` naming the file when it is not one."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"--text-config {path} is not a JSON file: {error}") from None
    if not isinstance(content, dict):
        raise TypeError(f"--text-config {path} must hold a JSON object of BERT settings, got {type(content).__name__}")
    return BertConfig(**content)


def output_dir_problem(folder: Path) -> str | None:
    """Why the converter cannot write into `folder`, or None. An existing checkpoint folder is refused: the
    converter never replaces a user's files."""
    if folder.exists() and not folder.is_dir():
        return "a file is in the way"
    if folder.is_dir() and any(folder.iterdir()):
        return "the folder exists and is not empty; choose a new one"
    parent = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not a writable folder"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    for path in (args.checkpoint, args.config, args.text_config, args.tokenizer):
        if path is not None and not path.exists():
            print(f"error: {path} does not exist", file=sys.stderr)
            return 2
    problem = output_dir_problem(args.output_dir)
    if problem:
        print(f"error: --output-dir {args.output_dir}: {problem}", file=sys.stderr)
        return 2
    try:
        text_config = read_text_config(args.text_config) if args.text_config else None
        model = convert_checkpoint(args.checkpoint, args.config, text_config)
        processor = processor_from_original(load_original_yaml(args.config), args.tokenizer)
    except (ConversionError, ValueError, TypeError) as error:
        print(f"error: cannot convert {args.checkpoint}:\n{error}", file=sys.stderr)
        return 1
    try:
        model.save_pretrained(args.output_dir)
        processor.save_pretrained(args.output_dir)
    except OSError as error:
        print(f"error: cannot write {args.output_dir}: {error}", file=sys.stderr)
        return 1
    count = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.output_dir} ({count:,} parameters)")
    if args.push_to_hub:
        model.push_to_hub(args.push_to_hub)
        processor.push_to_hub(args.push_to_hub)
        print(f"pushed to {args.push_to_hub}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
