"""Vision tower of GLIP: any transformers / timm backbone giving stride 8, 16 and 32 maps, then an FPN to P3-P7."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.backbone_utils import load_backbone


class GlipFeaturePyramid(nn.Module):
    """FPN with P6/P7 on top, as in RetinaNet and the original GLIP.

    Lateral 1x1 convs and 3x3 output convs make P3-P5 from C3-C5 with a nearest-neighbour top-down path;
    P6 is a stride-2 3x3 conv on P5 and P7 a stride-2 3x3 conv on relu(P6).

    Args:
        in_channels_per_level: channels of C3, C4, C5.
        out_channels: channels of every output level.
    """

    def __init__(self, in_channels_per_level: list[int], out_channels: int):
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels_per_level)
        self.output_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels_per_level
        )
        self.p6_conv = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        self.p7_conv = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                conv.glip_init = "kaiming_uniform"

    def forward(self, backbone_features: list[torch.Tensor]) -> list[torch.Tensor]:
        """backbone_features: [C3, C4, C5], each (batch, C_i, H_i, W_i). Returns [P3, ..., P7]."""
        top_down = self.lateral_convs[-1](backbone_features[-1])
        pyramid = [self.output_convs[-1](top_down)]
        for level in range(len(backbone_features) - 2, -1, -1):
            lateral = self.lateral_convs[level](backbone_features[level])
            if lateral.shape[-2:] != top_down.shape[-2:]:
                top_down = F.interpolate(top_down, size=lateral.shape[-2:], mode="nearest")
            top_down = lateral + top_down
            pyramid.insert(0, self.output_convs[level](top_down))
        p6 = self.p6_conv(pyramid[-1])
        p7 = self.p7_conv(F.relu(p6))
        return pyramid + [p6, p7]


class GlipVisionBackbone(nn.Module):
    """Backbone (transformers `AutoBackbone`, which includes timm models) followed by the feature pyramid."""

    def __init__(self, config):
        super().__init__()
        self.backbone = load_backbone(config)
        if hasattr(self.backbone, "swin"):
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
