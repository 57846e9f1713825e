"""ATSS grounding head of GLIP: anchors, box regression, centerness and dot-product token logits."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .box_ops_glip import PIXEL_INCLUSIVE
from .configuration_glip import CLAMP_VALUE
from .vision_glip import flatten_levels


def cell_anchors(stride: int, sizes: list[float], aspect_ratios: list[float]) -> list[list[float]]:
    """Anchors [len(ratios) * len(sizes)] x 4 of one cell at the origin, in the original's pixel-index layout.

    A square base box [0, stride-1] is reshaped to each aspect ratio (rounded sides, as the original), then scaled
    to each size; every box keeps the base centre (stride-1)/2. Pixel-index boxes (+1 widths), because released
    weights regress from these exact anchors; torchvision's anchor generator centres them differently.
    """
    centre = (stride - PIXEL_INCLUSIVE) / 2.0
    anchors = []
    for ratio in aspect_ratios:
        base_w = round(math.sqrt(stride * stride / ratio))
        base_h = round(base_w * ratio)
        for size in sizes:
            width, height = base_w * size / stride, base_h * size / stride
            half_w, half_h = 0.5 * (width - PIXEL_INCLUSIVE), 0.5 * (height - PIXEL_INCLUSIVE)
            anchors.append([centre - half_w, centre - half_h, centre + half_w, centre + half_h])
    return anchors


class GlipAnchorGenerator(nn.Module):
    """Anchors for every cell of every pyramid level, concatenated P3..P7, row-major (y outer) inside a level.

    Args:
        sizes: anchor size per level; with `scales_per_octave` > 1 each level gets sizes * octave_base ** (k / n).
        strides: stride per level.
        aspect_ratios: height / width ratios.
    """

    def __init__(self, sizes, strides, aspect_ratios, octave_base=2.0, scales_per_octave=1):
        super().__init__()
        self.strides = list(strides)
        # Plain floats, not tensors: they must survive models built on the meta device (from_pretrained).
        self._cells = []
        for size, stride in zip(sizes, strides):
            level_sizes = [size * octave_base ** (k / scales_per_octave) for k in range(scales_per_octave)]
            self._cells.append(cell_anchors(stride, level_sizes, aspect_ratios))
        self._cache: dict = {}

    def anchors_per_level(self, spatial_shapes, device, dtype=torch.float32) -> list[torch.Tensor]:
        """spatial_shapes: [(H_l, W_l)]. Returns [(H_l * W_l * A, 4)] per level, kept for the last sizes asked."""
        shapes = tuple(tuple(int(side) for side in shape) for shape in spatial_shapes)
        key = (shapes, str(device), dtype)
        if key not in self._cache:
            self._cache.clear()  # one entry: inputs of one size in a row are the common case
            self._cache[key] = self.grids(shapes, device, dtype)
        return self._cache[key]

    def grids(self, spatial_shapes, device, dtype=torch.float32) -> list[torch.Tensor]:
        """As `anchors_per_level`, uncached: the sizes may be symbolic, as in a torch.export graph of any image
        size, which computes the anchors for each input instead of baking in those of its example."""
        return [self._grid(torch.tensor(cell, device=device, dtype=dtype), stride, height, width)
                for cell, stride, (height, width) in zip(self._cells, self.strides, spatial_shapes)]

    @staticmethod
    def _grid(cell, stride, height, width):
        shift_y, shift_x = torch.meshgrid(
            torch.arange(height, device=cell.device, dtype=cell.dtype) * stride,
            torch.arange(width, device=cell.device, dtype=cell.dtype) * stride,
            indexing="ij",
        )
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)
        return (shifts + cell[None]).reshape(-1, 4)

    def forward(self, spatial_shapes, device, dtype=torch.float32) -> torch.Tensor:
        """Returns all anchors (num_anchors, 4)."""
        return torch.cat(self.anchors_per_level(spatial_shapes, device, dtype), dim=0)


class Scale(nn.Module):
    """A learnable scalar multiplier (one per pyramid level for the box regression)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class GlipGroundingHead(nn.Module):
    """Box regression, centerness and token logits on top of the DyHead tower.

    The token logits are a scaled dot product between every anchor's feature and a projection of each
    L2-normalised text token, plus a per-token bias: `(v . proj(e / 2)) / exp(log_scale) + e . bias_lang + bias0`.
    Sizes come from the config (`head_channels`, the text tower's hidden size, one box scale per anchor stride);
    `prior_prob` sets the initial token probability through `bias0`, `log_scale_init` the initial log temperature,
    and `clamp_dot_product` clamps the logits to +-CLAMP_VALUE as the original.
    """

    def __init__(self, config):
        super().__init__()
        channels, text_dim = config.head_channels, config.text_config.hidden_size
        self.prior_prob = config.prior_prob
        self.log_scale_init = config.log_scale_init
        self.clamp_dot_product = config.clamp_dot_product
        self.bbox_pred = nn.Conv2d(channels, 4, 1)
        self.centerness = nn.Conv2d(channels, 1, 1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in config.anchor_strides)
        self.text_projection = nn.Linear(text_dim, channels)
        self.log_scale = nn.Parameter(torch.tensor([float(config.log_scale_init)]))
        self.text_bias = nn.Parameter(torch.zeros(text_dim))
        self.logit_bias = nn.Parameter(torch.tensor([self.prior_bias]))

    @property
    def prior_bias(self) -> float:
        return -math.log((1 - self.prior_prob) / self.prior_prob)

    def token_logits(self, vision_tokens: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """vision_tokens (B, A, C), text_features (B, T, D) -> logits (B, A, T)."""
        normalized_text = F.normalize(text_features, p=2, dim=-1)
        projected_text = self.text_projection(normalized_text / 2.0)
        token_bias = normalized_text @ self.text_bias + self.logit_bias
        logits = (vision_tokens @ projected_text.transpose(-1, -2)) / self.log_scale.exp() + token_bias[:, None, :]
        if self.clamp_dot_product:
            logits = logits.clamp(-CLAMP_VALUE, CLAMP_VALUE)
        return logits

    def forward(self, vision_features: list[torch.Tensor], text_features: torch.Tensor):
        """vision_features: [(B, C, H_l, W_l)]; text_features (B, T, D).

        Returns logits (B, A, T), box regression (B, A, 4) and centerness logits (B, A), with the anchors
        A = sum_l H_l * W_l concatenated P3..P7.
        """
        box_regression = [scale(self.bbox_pred(f)) for scale, f in zip(self.scales, vision_features)]
        centerness = [self.centerness(f) for f in vision_features]
        logits = self.token_logits(flatten_levels(vision_features), text_features)
        return logits, flatten_levels(box_regression), flatten_levels(centerness).squeeze(-1)
