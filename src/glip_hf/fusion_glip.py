"""The vision-language DyHead of GLIP: bi-directional cross-attention, BERT layers with clamps, and DyConv.

Each DyHead layer runs, in order: the cross-attention early fusion (vision and text update each other), a BERT
layer on the text, and a DyConv on every pyramid level. The blocks take the `GlipConfig`; the attention form follows
its `_attn_implementation` ("eager": the original's arithmetic, "sdpa": fused kernels, see `speed_glip`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration_glip import CLAMP_VALUE
from .deform_conv_glip import ModulatedDeformConv2d
from .speed_glip import cross_attention_form
from .vision_glip import flatten_levels, unflatten_levels

# Additive attention-mask value the original uses for padded text tokens in the cross-attention.
TEXT_PAD_LOGIT = -9e15


class GlipBiAttention(nn.Module):
    """Multi-head cross-attention in both directions between visual tokens and text tokens.

    Vision queries attend over text tokens (padded tokens masked); text queries attend over every visual token.
    Both directions share one logit matrix, as in the original.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config  # read at call time: `set_attn_implementation` changes the attention form
        vision_dim, text_dim, embed_dim = config.head_channels, config.text_config.hidden_size, config.fusion_embed_dim
        self.num_heads = config.fusion_num_heads
        self.head_dim = embed_dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = config.fusion_attention_dropout
        self.clamp_min = -CLAMP_VALUE if config.fusion_clamp_min else None
        self.clamp_max = CLAMP_VALUE if config.fusion_clamp_max else None
        self.vision_query_proj = nn.Linear(vision_dim, embed_dim)
        self.text_key_proj = nn.Linear(text_dim, embed_dim)
        self.vision_value_proj = nn.Linear(vision_dim, embed_dim)
        self.text_value_proj = nn.Linear(text_dim, embed_dim)
        self.vision_out_proj = nn.Linear(embed_dim, vision_dim)
        self.text_out_proj = nn.Linear(embed_dim, text_dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def _merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).flatten(2)

    def _clamp(self, x: torch.Tensor) -> torch.Tensor:
        if self.clamp_min is None and self.clamp_max is None:
            return x
        return x.clamp(min=self.clamp_min, max=self.clamp_max)

    def forward(self, vision_tokens, text_tokens, text_mask):
        """vision_tokens (B, N, Cv), text_tokens (B, T, Ct), text_mask (B, T) 1 = real token.

        Returns the updates (B, N, Cv) and (B, T, Ct).
        """
        implementation = cross_attention_form(self.config._attn_implementation, vision_tokens.device)
        # The original adds the integer mask itself: +1 on real tokens (no effect on the softmax), -9e15 on pads.
        mask_bias = torch.where(text_mask.bool(), 1.0, TEXT_PAD_LOGIT)[:, None, None, :]
        dropout = self.dropout if self.training else 0.0
        if implementation == "folded":
            return self._folded(vision_tokens, text_tokens, mask_bias, dropout)
        query = self._split_heads(self.vision_query_proj(vision_tokens))
        key = self._split_heads(self.text_key_proj(text_tokens))
        vision_values = self._split_heads(self.vision_value_proj(vision_tokens))
        text_values = self._split_heads(self.text_value_proj(text_tokens))
        mask_bias = mask_bias.to(query.dtype)
        if implementation == "sdpa":
            # Fused kernels keep the softmax in float32, so the fp16 overflow guards (the +-50000 clamps) are not
            # needed; they could only change logits beyond 50000, where either softmax is one-hot.
            vision_context = F.scaled_dot_product_attention(
                query, key, text_values, attn_mask=mask_bias, dropout_p=dropout, scale=self.scale)
            text_context = F.scaled_dot_product_attention(key, query, vision_values, dropout_p=dropout, scale=self.scale)
        else:
            vision_context, text_context = self._eager_contexts(query, key, vision_values, text_values, mask_bias, dropout)
        return self.vision_out_proj(self._merge_heads(vision_context)), self.text_out_proj(self._merge_heads(text_context))

    def _folded(self, vision_tokens, text_tokens, mask_bias, dropout):
        """The eager arithmetic with the three (N, Cv) x (Cv, E) projections of the visual tokens folded into the
        T << N text tokens: logits = (X Wq' + bq) K' = X (Wq' K') + bq K'; P (V Wo') replaces the vision output
        projection and (P' X) Wv' the vision value projection, so that the large operand is multiplied once. The
        clamps are left out as in SDPA (see `forward`).
        """
        heads = (self.num_heads, self.head_dim)
        key = self.text_key_proj(text_tokens).unflatten(-1, heads) * self.scale  # (B, T, H, d)
        query_weight = self.vision_query_proj.weight.unflatten(0, heads)  # (H, d, Cv)
        folded_keys = torch.einsum("hdc,bthd->bcht", query_weight, key).flatten(2)  # (B, Cv, H*T)
        # bq K' is constant over the visual tokens: the text queries' softmax over them does not see it.
        logits = vision_tokens @ folded_keys  # (B, N, H*T), without bq K'
        text_update = self._folded_text_update(logits, vision_tokens, dropout)
        key_bias = torch.einsum("hd,bthd->bht", self.vision_query_proj.bias.view(heads), key)  # (B, H, T)
        # In place: nothing saved for backward holds the logits any more.
        logits = logits.unflatten(-1, (self.num_heads, -1)).add_((key_bias.unsqueeze(1) + mask_bias).to(logits.dtype))
        vision_probs = F.dropout(logits.softmax(dim=-1), p=dropout, training=dropout > 0)
        text_values = self.text_value_proj(text_tokens).unflatten(-1, heads)  # (B, T, H, d)
        out_weight = self.vision_out_proj.weight.unflatten(1, heads)  # (Cv, H, d)
        text_values_out = torch.einsum("bthd,chd->bhtc", text_values, out_weight).flatten(1, 2)  # (B, H*T, Cv)
        vision_update = torch.baddbmm(self.vision_out_proj.bias.to(text_values_out.dtype), vision_probs.flatten(2),
                                      text_values_out)
        return vision_update, text_update

    def _folded_text_update(self, logits, vision_tokens, dropout):
        """Text queries over the N visual tokens, from logits (B, N, H*T). The softmax over N is left unnormalised
        until after the pooling, so that the division runs on (H*T, Cv) numbers instead of (N, H*T)."""
        # The shift only guards exp() from overflow; softmax does not depend on it, so it needs no gradient.
        weights = (logits - logits.detach().amax(dim=1, keepdim=True)).exp_()
        normaliser = weights.sum(dim=1).unsqueeze(-1)  # (B, H*T, 1)
        weights = F.dropout(weights, p=dropout, training=dropout > 0)
        # X' W rather than W' X: only the small operand is transposed (BLAS copies a transposed batched operand).
        pooled_vision = (vision_tokens.transpose(1, 2) @ weights).transpose(1, 2) / normaliser  # (B, H*T, Cv)
        value_weight = self.vision_value_proj.weight.unflatten(0, (self.num_heads, self.head_dim))  # (H, d, Cv)
        text_context = torch.einsum("bhtc,hdc->bthd", pooled_vision.unflatten(1, (self.num_heads, -1)), value_weight)
        # A probability row sums to 1, which carries the value bias through the pooling; after dropout, its sum.
        value_bias = self.vision_value_proj.bias.view(self.num_heads, self.head_dim)
        if dropout > 0:
            row_sums = (weights.sum(dim=1) / normaliser.squeeze(-1)).unflatten(1, (self.num_heads, -1))  # (B, H, T)
            value_bias = row_sums.transpose(1, 2).unsqueeze(-1) * value_bias  # (B, T, H, d)
        return self.text_out_proj((text_context + value_bias).flatten(2))

    def _eager_contexts(self, query, key, vision_values, text_values, mask_bias, dropout):
        """The original's arithmetic, clamps included (the reference path)."""
        logits = self._clamp((query * self.scale) @ key.transpose(-1, -2))  # (B, heads, N, T)
        text_logits = logits.transpose(-1, -2)
        text_probs = self._clamp(text_logits - text_logits.amax(dim=-1, keepdim=True)).softmax(dim=-1)
        vision_probs = (logits + mask_bias).softmax(dim=-1)
        vision_probs = F.dropout(vision_probs, p=dropout, training=dropout > 0)
        text_probs = F.dropout(text_probs, p=dropout, training=dropout > 0)
        return vision_probs @ text_values, text_probs @ vision_values


class GlipFusionBlock(nn.Module):
    """Pre-norm bi-directional attention with layer scale. The residual adds to the *normalised* inputs."""

    def __init__(self, config):
        super().__init__()
        vision_dim, text_dim = config.head_channels, config.text_config.hidden_size
        self.vision_layer_norm = nn.LayerNorm(vision_dim)
        self.text_layer_norm = nn.LayerNorm(text_dim)
        self.attention = GlipBiAttention(config)
        self.vision_gamma = nn.Parameter(torch.full((vision_dim,), float(config.fusion_layer_scale_init)))
        self.text_gamma = nn.Parameter(torch.full((text_dim,), float(config.fusion_layer_scale_init)))

    def forward(self, vision_features, text_features, text_mask):
        """vision_features: [(B, C, H_l, W_l)] per level; text_features (B, T, D). Returns both updated."""
        vision_tokens = self.vision_layer_norm(flatten_levels(vision_features))
        text_features = self.text_layer_norm(text_features)
        vision_update, text_update = self.attention(vision_tokens, text_features, text_mask)
        vision_tokens = vision_tokens + self.vision_gamma * vision_update
        text_features = text_features + self.text_gamma * text_update
        return unflatten_levels(vision_tokens, vision_features), text_features


class GlipTextLayer(nn.Module):
    """A BERT encoder layer (the text tower's dims) with the original's clamps on attention scores and on the
    feed-forward activations. Eager attention is the original's arithmetic; otherwise SDPA."""

    def __init__(self, config):
        super().__init__()
        self.config = config  # read at call time: `set_attn_implementation` changes the attention form
        text = config.text_config
        hidden_size, layer_norm_eps = text.hidden_size, text.layer_norm_eps
        self.num_heads = text.num_attention_heads
        self.head_dim = hidden_size // self.num_heads
        self.clamp_min = -CLAMP_VALUE if config.text_layer_clamp_min else None
        self.clamp_max = CLAMP_VALUE if config.text_layer_clamp_max else None
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.attention_output = nn.Linear(hidden_size, hidden_size)
        self.attention_layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.intermediate = nn.Linear(hidden_size, text.intermediate_size)
        self.activation = ACT2FN[text.hidden_act]
        self.output = nn.Linear(text.intermediate_size, hidden_size)
        self.output_layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(text.hidden_dropout_prob)
        self.attention_dropout = nn.Dropout(text.attention_probs_dropout_prob)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, hidden_states: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """hidden_states (B, T, D), text_mask (B, T) 1 = real token. Returns (B, T, D)."""
        query, key, value = (self._heads(proj(hidden_states)) for proj in (self.query, self.key, self.value))
        pad_bias = (1.0 - text_mask[:, None, None, :].to(query.dtype)) * torch.finfo(query.dtype).min
        if self.config._attn_implementation != "eager":
            dropout = self.attention_dropout.p if self.training else 0.0
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=pad_bias, dropout_p=dropout)
        else:
            scores = (query @ key.transpose(-1, -2)) / (self.head_dim**0.5)
            if self.clamp_min is not None or self.clamp_max is not None:
                scores = scores.clamp(min=self.clamp_min, max=self.clamp_max)
            context = self.attention_dropout((scores + pad_bias).softmax(dim=-1)) @ value
        context = context.transpose(1, 2).flatten(2)
        attention_out = self.attention_layer_norm(self.dropout(self.attention_output(context)) + hidden_states)

        # These clamps are unconditional in the original.
        intermediate = self.intermediate(attention_out).clamp(-CLAMP_VALUE, CLAMP_VALUE)
        intermediate = self.activation(intermediate).clamp(-CLAMP_VALUE, CLAMP_VALUE)
        output = self.dropout(self.output(intermediate)).clamp(-CLAMP_VALUE, CLAMP_VALUE)
        return self.output_layer_norm(output + attention_out).clamp(-CLAMP_VALUE, CLAMP_VALUE)


class GlipDyReLU(nn.Module):
    """Dynamic ReLU (two pieces with bias): out = max(x * a1 + b1, x * a2 + b2), coefficients from the global mean."""

    def __init__(self, *, channels: int, reduction: int = 4):
        super().__init__()
        self.channels = channels
        self.squeeze = nn.Linear(channels, channels // reduction)
        self.expand = nn.Linear(channels // reduction, 4 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coefficients = F.hardsigmoid(self.expand(F.relu(self.squeeze(F.adaptive_avg_pool2d(x, 1).flatten(1)))))
        a1, b1, a2, b2 = coefficients[:, :, None, None].split(self.channels, dim=1)
        # lambda_a = 2 and init_a = (1, 0), init_b = (0, 0) as in the original.
        return torch.maximum(x * ((a1 - 0.5) * 2.0 + 1.0) + (b1 - 0.5), x * ((a2 - 0.5) * 2.0) + (b2 - 0.5))


class ConvNorm(nn.Module):
    """A (deformable) 3x3 conv followed by GroupNorm, or by nothing when `num_groups` is None."""

    def __init__(self, *, channels: int, stride: int, num_groups: int | None, eps: float):
        super().__init__()
        self.conv = ModulatedDeformConv2d(channels, channels, stride)
        self.norm = nn.GroupNorm(num_groups, channels, eps=eps) if num_groups else nn.Identity()

    def forward(self, x, offset=None, mask=None):
        return self.norm(self.conv(x, offset, mask))


def reinterpret_offsets(offset_and_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Read the first C*h*w values of each sample's contiguous (C, H, W) block as (C, h, w).

    This is what the original CUDA kernel does, without a shape check, when the finer level's offsets are passed
    to the conv on the coarser level.
    """
    batch, channels = offset_and_mask.shape[:2]
    flat = offset_and_mask.contiguous().flatten(1)[:, : channels * size[0] * size[1]]
    return flat.reshape(batch, channels, *size)


def resample_offsets(offset: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Offsets (B, 18, H, W) in pixels of an H x W map, resampled to (h, w) and rescaled to that map's pixels."""
    scale_y, scale_x = size[0] / offset.shape[-2], size[1] / offset.shape[-1]
    resized = F.interpolate(offset, size=size, mode="bilinear", align_corners=False).unflatten(1, (-1, 2))
    # Python scales, not a host tensor: copying one to the GPU would synchronise.
    return torch.stack((resized[:, :, 0] * scale_y, resized[:, :, 1] * scale_x), dim=2).flatten(1, 2)


class GlipDyConv(nn.Module):
    """Scale-aware, spatial-aware and task-aware DyHead block over the 5 pyramid levels.

    For level l, three terms are combined: a conv on the level itself, a stride-2 conv on the finer level l-1, and
    a conv on the coarser level l+1 upsampled to level l. All three use the deformable offsets predicted from
    level l. Each term is weighted by a hard-sigmoid gate of its global mean (scale-aware attention); the mean of
    the weighted terms goes through DyReLU.
    """

    def __init__(self, config):
        super().__init__()
        channels = config.head_channels
        norm = dict(num_groups=config.group_norm_num_groups if config.use_group_norm else None,
                    eps=config.group_norm_eps)
        self.conv_same = ConvNorm(channels=channels, stride=1, **norm)
        self.conv_from_finer = ConvNorm(channels=channels, stride=2, **norm)
        self.conv_from_coarser = ConvNorm(channels=channels, stride=1, **norm)
        self.offset_conv = nn.Conv2d(channels, 27, 3, padding=1) if config.use_deformable_conv else None
        self.scale_attention = nn.Conv2d(channels, 1, 1) if config.use_scale_aware_attention else None
        self.activation = GlipDyReLU(channels=channels) if config.use_dyrelu else nn.ReLU()
        self.legacy_upsampled_offset_reinterpretation = config.legacy_upsampled_offset_reinterpretation

    def _coarser_offsets(self, offset, mask, size):
        if self.legacy_upsampled_offset_reinterpretation:
            return reinterpret_offsets(offset, size), reinterpret_offsets(mask, size)
        resized_mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
        return resample_offsets(offset, size), resized_mask

    def _level_terms(self, features, level):
        feature = features[level]
        offset = mask = None
        if self.offset_conv is not None:
            offset_and_mask = self.offset_conv(feature)
            offset, mask = offset_and_mask[:, :18], offset_and_mask[:, 18:].sigmoid()
        terms = [self.conv_same(feature, offset, mask)]
        if level > 0:
            terms.append(self.conv_from_finer(features[level - 1], offset, mask))
        if level < len(features) - 1:
            coarser = features[level + 1]
            coarser_offset = coarser_mask = None
            if offset is not None:
                coarser_offset, coarser_mask = self._coarser_offsets(offset, mask, coarser.shape[-2:])
            coarser_term = self.conv_from_coarser(coarser, coarser_offset, coarser_mask)
            terms.append(F.interpolate(coarser_term, size=feature.shape[-2:], mode="bilinear", align_corners=True))
        return torch.stack(terms)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """features: [(B, C, H_l, W_l)] for the 5 levels. Returns the same shapes."""
        outputs = []
        for level in range(len(features)):
            terms = self._level_terms(features, level)  # (num_terms, B, C, H, W)
            if self.scale_attention is not None:
                gate = F.relu(self.scale_attention(F.adaptive_avg_pool2d(terms.flatten(0, 1), 1)))
                terms = terms * F.hardsigmoid(gate).view(terms.shape[0], terms.shape[1], 1, 1, 1)
            outputs.append(self.activation(terms.mean(dim=0)))
        return outputs


class GlipDyHeadLayer(GradientCheckpointingLayer):
    """One DyHead layer: optional fusion, optional BERT text layer, then the DyConv."""

    def __init__(self, config, has_text_layer: bool):
        super().__init__()
        self.fusion = GlipFusionBlock(config) if config.early_fusion else None
        self.text_layer = GlipTextLayer(config) if has_text_layer else None
        self.dyconv = GlipDyConv(config)

    def forward(self, text_features, text_mask, *vision_features):
        """text_features (B, T, D), text_mask (B, T), then one (B, C, H_l, W_l) tensor per level.

        Tensors go in and out flat (not in lists) so that every kind of activation checkpointing tracks them.
        Returns (text after fusion, text after the BERT layer, *vision after fusion, *vision after the DyConv).
        """
        vision_features = list(vision_features)
        if self.fusion is not None:
            vision_features, text_features = self.fusion(vision_features, text_features, text_mask)
        fused_text = text_features
        if self.text_layer is not None:
            text_features = self.text_layer(text_features, text_mask)
        return (fused_text, text_features, *vision_features, *self.dyconv(vision_features))
