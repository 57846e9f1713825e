"""Vision tower of GLIP: any transformers / timm backbone giving stride 8, 16 and 32 maps, then an FPN to P3-P7;
and the layout of the pyramid levels as one sequence of visual tokens."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7
from transformers import AutoConfig, PreTrainedConfig
from transformers.backbone_utils import load_backbone
from transformers.models.auto import CONFIG_MAPPING

# Names of timm models start with this in `GlipPreTrainedModel.from_vision_text_pretrained` (as timm's Hub ids do).
TIMM_PREFIX = "timm/"
# Weights of pretrained backbones that GLIP does not use (see GlipVisionBackbone).
UNUSED_BACKBONE_WEIGHTS = ("swin.layernorm.",)


def flatten_levels(features_per_level: list[torch.Tensor]) -> torch.Tensor:
    """[(batch, C, H_l, W_l)] -> (batch, sum_l H_l * W_l, C), levels concatenated in order, rows row-major."""
    return torch.cat([f.flatten(2).transpose(1, 2) for f in features_per_level], dim=1)


def unflatten_levels(tokens: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Inverse of `flatten_levels`, with the spatial sizes taken from `like`."""
    sizes = [f.shape[-2] * f.shape[-1] for f in like]
    chunks = tokens.transpose(1, 2).split(sizes, dim=2)
    return [chunk.reshape(f.shape[0], -1, f.shape[-2], f.shape[-1]) for chunk, f in zip(chunks, like)]


class GlipFeaturePyramid(FeaturePyramidNetwork):
    """torchvision's FPN with RetinaNet's P6/P7, as the original GLIP: lateral 1x1 and output 3x3 convs make
    P3-P5 from C3-C5 with a nearest-neighbour top-down path; P6 is a stride-2 3x3 conv on P5 (in and out channels
    are equal, so `LastLevelP6P7` takes P5, as the original) and P7 one on relu(P6).

    Args:
        in_channels_per_level: channels of C3, C4, C5.
        out_channels: channels of every output level.
    """

    def __init__(self, in_channels_per_level: list[int], out_channels: int):
        super().__init__(list(in_channels_per_level), out_channels,
                         extra_blocks=LastLevelP6P7(out_channels, out_channels))

    def forward(self, backbone_features: list[torch.Tensor]) -> list[torch.Tensor]:
        """backbone_features: [C3, C4, C5], each (batch, C_i, H_i, W_i). Returns [P3, ..., P7]."""
        named = OrderedDict((f"c{index + 3}", feature) for index, feature in enumerate(backbone_features))
        return list(super().forward(named).values())


class GlipVisionBackbone(nn.Module):
    """Backbone (transformers `AutoBackbone`, which includes timm models) followed by the feature pyramid."""

    def __init__(self, config):
        super().__init__()
        self.backbone = load_backbone(config)
        if hasattr(self.backbone, "swin"):  # see UNUSED_BACKBONE_WEIGHTS
            # SwinModel's final LayerNorm only feeds its pooled output, which GLIP never reads; the per-stage
            # output norms (`hidden_states_norms`) are the ones GLIP has.
            self.backbone.swin.layernorm = nn.Identity()
        channels = list(self.backbone.channels)
        if len(channels) != 3:
            raise ValueError(
                f"GLIP's FPN needs exactly 3 backbone outputs at strides 8, 16 and 32; the backbone gives "
                f"{len(channels)} ({channels}). Set out_features / out_indices of the backbone config accordingly."
            )
        self.fpn = GlipFeaturePyramid(channels, config.fpn_channels)

    def forward(self, pixel_values: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Returns (backbone maps C3-C5, pyramid maps P3-P7)."""
        backbone_features = list(self.backbone(pixel_values).feature_maps)
        return backbone_features, self.fpn(backbone_features)


def pretrained_backbone_config(name_or_path: str, **backbone_kwargs) -> PreTrainedConfig:
    """The backbone config of a pretrained vision tower, with the stride 8, 16 and 32 outputs GLIP's FPN takes.

    `name_or_path`: a transformers checkpoint (Hub id or folder) of a model with a backbone class (Swin, ConvNeXt,
    ResNet, ...), whose last three stages are taken; or "timm/<model name>" for a timm model, whose last three
    feature levels are taken. `backbone_kwargs` override fields of the backbone config (`out_features`,
    `out_indices`, `freeze_batch_norm_2d`, ...).
    """
    if name_or_path.startswith(TIMM_PREFIX):
        kwargs = {"out_indices": [-3, -2, -1], **backbone_kwargs}
        return CONFIG_MAPPING["timm_backbone"](backbone=name_or_path[len(TIMM_PREFIX):], **kwargs)
    config = AutoConfig.from_pretrained(name_or_path)
    stage_names = getattr(config, "stage_names", None)
    if not stage_names:
        raise ValueError(f"{name_or_path!r} holds a {config.model_type!r} model, which has no backbone class in "
                         "transformers (no stage_names); give a backbone checkpoint (Swin, ConvNeXt, ResNet, ...) or "
                         f"{TIMM_PREFIX}<model name> for a timm model")
    config = AutoConfig.from_pretrained(name_or_path, **{"out_features": list(stage_names[-3:]), **backbone_kwargs})
    return config


def load_pretrained_backbone_weights(backbone: nn.Module, name_or_path: str, weights_file=None) -> None:
    """Load the pretrained weights of `name_or_path` (see `pretrained_backbone_config`) into `backbone`, a
    backbone built from that config. A timm model takes them from `weights_file` (a local .safetensors or .pth
    file of the full timm model) or else from the Hub; a transformers checkpoint carries its own."""
    if name_or_path.startswith(TIMM_PREFIX):
        import timm

        config = backbone.config
        overlay = {"pretrained_cfg_overlay": {"file": str(Path(weights_file))}} if weights_file is not None else {}
        # A feature extractor drops the classifier on purpose; timm would warn once per load that its keys are unused.
        with _quiet_logger("timm.models._builder", quiet=config.features_only):
            pretrained = timm.create_model(config.backbone, pretrained=True, features_only=config.features_only,
                                           out_indices=config.out_indices, output_stride=config.output_stride,
                                           **overlay)
        if config.freeze_batch_norm_2d:
            pretrained = timm.utils.model.freeze_batch_norm_2d(pretrained)
        load_tower_weights(backbone._backbone, pretrained.state_dict(), name_or_path)
        return
    if weights_file is not None:
        raise ValueError(f"weights_file is for timm models; the transformers checkpoint {name_or_path!r} has its own")
    # The backbone's own class: AutoBackbone.from_pretrained asks the Hub about every name, local folders too.
    pretrained = type(backbone).from_pretrained(name_or_path, config=copy.deepcopy(backbone.config))
    load_tower_weights(backbone, pretrained.state_dict(), name_or_path)


@contextlib.contextmanager
def _quiet_logger(name: str, quiet: bool = True):
    """Warnings of the named logger are dropped inside the block (errors still show)."""
    logger = logging.getLogger(name)
    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_tower_weights(module: nn.Module, state_dict: dict, source: str) -> None:
    """Every weight of `module` from `state_dict`, or a ValueError naming what is missing or left over."""
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    unexpected = [key for key in unexpected if not key.startswith(UNUSED_BACKBONE_WEIGHTS)]
    if missing or unexpected:
        raise ValueError(f"the weights of {source!r} do not fit its tower: missing {missing[:10]} "
                         f"({len(missing)} in all), unexpected {unexpected[:10]} ({len(unexpected)} in all)")
