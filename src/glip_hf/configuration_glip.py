"""GLIP configuration: a composite config with a vision backbone, a BERT text tower and the grounding head."""

from __future__ import annotations

import math

from transformers import BertConfig, PreTrainedConfig, SwinConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto import CONFIG_MAPPING, AutoConfig

# Swin dimensions of the released checkpoints; `out_features` are the stride 8/16/32 stages that feed the FPN.
SWIN_TINY = dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, drop_path_rate=0.2)
SWIN_LARGE = dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12, drop_path_rate=0.4)
SWIN_OUT_FEATURES = ["stage2", "stage3", "stage4"]
# The original clamps activations to +-CLAMP_VALUE so that fp16 training cannot overflow (the `*_clamp_*` fields).
CLAMP_VALUE = 50000.0

# What distinguishes the released variants, on top of the GLIP-T (C) defaults of `GlipConfig`.
PRESETS = {
    "glip-t-a": dict(swin=SWIN_TINY, early_fusion=False, fused_features_dot_product=False),
    "glip-t-b": dict(swin=SWIN_TINY),
    "glip-t-c": dict(swin=SWIN_TINY),
    "glip-t": dict(swin=SWIN_TINY),
    "glip-l": dict(swin=SWIN_LARGE, num_dyhead_layers=8),
}


def swin_backbone_config(**swin_kwargs) -> SwinConfig:
    """A transformers `SwinConfig` laid out as GLIP uses it: stride 8, 16 and 32 outputs, each with its own norm."""
    swin_kwargs.setdefault("out_features", list(SWIN_OUT_FEATURES))
    return SwinConfig(**swin_kwargs)


class GlipConfig(PreTrainedConfig):
    r"""
    Configuration of a GLIP model ([`GlipModel`] / [`GlipForGrounding`]). The defaults build GLIP-T (C); use
    [`GlipConfig.from_preset`] for the other released variants.

    Args:
        backbone_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of any transformers backbone (`AutoBackbone`). Defaults to GLIP-T's Swin-T with stage 2-4 outputs.
        backbone (`str`, *optional*):
            Name of a timm model to use as the vision backbone instead of `backbone_config`.
        backbone_kwargs (`dict`, *optional*):
            Extra arguments for the timm backbone (for example `out_indices`, default the last three stages).
        text_config (`dict` or `BertConfig`, *optional*):
            The BERT text tower; its dims are also used by the language layers inside the fusion head.
        fpn_channels (`int`): channels of the FPN levels P3-P7 (`BACKBONE.OUT_CHANNELS`).
        head_channels (`int`): channels of the DyHead tower (`DYHEAD.CHANNELS`); GLIP requires it equal to
            `fpn_channels`.
        num_dyhead_layers (`int`): number of DyHead layers (`DYHEAD.NUM_CONVS`).
        early_fusion (`bool`): deep vision-language fusion in each DyHead layer (`FUSE_CONFIG.EARLY_FUSE_ON`).
        fused_features_dot_product (`bool`): score tokens with the fused text features rather than the text tower's
            (`USE_FUSED_FEATURES_DOT_PRODUCT`).
        fusion_embed_dim, fusion_num_heads (`int`): width and heads of the bi-directional cross-attention (hard-coded
            to 2048 and 8 in the original).
        fusion_attention_dropout (`float`): attention dropout of the cross-attention.
        fusion_layer_scale_init (`float`, *optional*): initial layer-scale value, default `1 / num_dyhead_layers`.
        fusion_clamp_min, fusion_clamp_max (`bool`): clamp the cross-attention logits to +-50000.
        text_layer_clamp_min, text_layer_clamp_max (`bool`): clamp the fusion BERT layers' attention scores.
        clamp_dot_product (`bool`): clamp the token logits to +-50000.
        use_dyrelu, use_deformable_conv, use_group_norm, use_scale_aware_attention (`bool`): DyHead switches
            (`USE_DYRELU`, `USE_DFCONV`, `USE_GN`, `USE_DYFUSE`).
        group_norm_num_groups (`int`), group_norm_eps (`float`): GroupNorm after each DyConv.
        anchor_sizes, anchor_strides (`list[int]`): one entry per level P3-P7.
        anchor_aspect_ratios (`list[float]`), anchor_octave_base (`float`), anchor_scales_per_octave (`int`).
        box_coder_weights (`list[float]`): (wx, wy, ww, wh) of the box coder.
        box_coder_max_log_scale (`float`): upper clamp of decoded log width/height, log(1000/16).
        max_text_len (`int`): longest caption, in tokens, the model accepts.
        prior_prob (`float`): prior of the token logits' bias at initialisation.
        log_scale_init (`float`): initial log temperature of the dot-product logits.
        pre_nms_score_threshold, pre_nms_top_n, nms_threshold, detections_per_image: inference settings.
        atss_topk, focal_alpha, focal_gamma, box_loss_weight: training settings (ATSS and losses).
        prompt_tuning (`bool`): add learnable prompt embeddings (max_text_len x text dim, zero at start) to the text
            tower's output, as the original's `ADD_LINEAR_LAYER` ("prompt tuning" of the GLIP paper).
        max_prompts_per_pass (`int`, *optional*): run at most this many prompt rows (captions, or chunks of a long
            class list) through the text tower and the DyHead at once; the vision tower still runs once. Bounds
            memory with long vocabularies. None (default): `speed_glip.prompt_rows_per_pass` decides (all rows at
            once on accelerators; on CPUs as many rows as make `speed_glip.CPU_PIXELS_PER_PASS` pixels).
        legacy_upsampled_offset_reinterpretation (`bool`): reproduce the original CUDA kernel's bug in the DyConv
            branch that reads the finer level's offsets for a coarser map (see `fusion_glip.DyConv`). Converted
            checkpoints switch it on because their weights were trained with it.
    """

    model_type = "glip"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(
            config_class=AutoConfig, model_type="swin", init_kwargs=dict(SWIN_TINY, out_features=SWIN_OUT_FEATURES)
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
    }

    backbone_config: dict | PreTrainedConfig | None = None
    backbone: str | None = None
    backbone_kwargs: dict | None = None
    text_config: dict | PreTrainedConfig | None = None
    fpn_channels: int = 256
    head_channels: int = 256
    num_dyhead_layers: int = 6
    early_fusion: bool = True
    fused_features_dot_product: bool = True
    fusion_embed_dim: int = 2048
    fusion_num_heads: int = 8
    fusion_attention_dropout: float = 0.1
    fusion_layer_scale_init: float | None = None
    fusion_clamp_min: bool = True
    fusion_clamp_max: bool = True
    text_layer_clamp_min: bool = True
    text_layer_clamp_max: bool = True
    clamp_dot_product: bool = True
    use_dyrelu: bool = True
    use_deformable_conv: bool = True
    use_group_norm: bool = True
    use_scale_aware_attention: bool = True
    group_norm_num_groups: int = 16
    group_norm_eps: float = 1e-5
    anchor_sizes: list | None = None
    anchor_strides: list | None = None
    anchor_aspect_ratios: list | None = None
    anchor_octave_base: float = 2.0
    anchor_scales_per_octave: int = 1
    box_coder_weights: list | None = None
    box_coder_max_log_scale: float = math.log(1000.0 / 16)
    max_text_len: int = 256
    prior_prob: float = 0.01
    log_scale_init: float = 0.0
    pre_nms_score_threshold: float = 0.05
    pre_nms_top_n: int = 1000
    nms_threshold: float = 0.6
    detections_per_image: int = 100
    atss_topk: int = 9
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box_loss_weight: float = 2.0
    legacy_upsampled_offset_reinterpretation: bool = False
    prompt_tuning: bool = False
    max_prompts_per_pass: int | None = None
    init_std: float = 0.01

    def __post_init__(self, **kwargs):
        if self.backbone is not None and self.backbone_config is None:
            # Built here rather than by transformers, whose name lookup would query the (unreachable) Hub.
            timm_kwargs = {"out_indices": [-3, -2, -1], **(self.backbone_kwargs or {})}
            self.backbone_config = CONFIG_MAPPING["timm_backbone"](backbone=self.backbone, **timm_kwargs)
        for name, default in (
            ("anchor_sizes", [64, 128, 256, 512, 1024]),
            ("anchor_strides", [8, 16, 32, 64, 128]),
            ("anchor_aspect_ratios", [1.0]),
            ("box_coder_weights", [10.0, 10.0, 5.0, 5.0]),
        ):
            value = getattr(self, name)
            setattr(self, name, list(default if value is None else value))
        if self.fusion_layer_scale_init is None:
            self.fusion_layer_scale_init = 1.0 / max(self.num_dyhead_layers, 1)
        super().__post_init__(**kwargs)
        if self.text_config.model_type != "bert":
            raise ValueError(f"text_config must be a BERT config, got model_type={self.text_config.model_type!r}")
        self.check_architecture()

    # transformers reads these generic names (e.g. for `hidden_size`-based utilities and the pipeline).
    @property
    def hidden_size(self) -> int:
        return self.head_channels

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.anchor_aspect_ratios) * self.anchor_scales_per_octave

    @property
    def has_text_layer(self) -> list[bool]:
        """Whether DyHead layer i updates the text with a BERT layer (the last one only if its output is used)."""
        last = self.num_dyhead_layers - 1
        return [self.early_fusion and (i < last or self.fused_features_dot_product) for i in range(last + 1)]

    def check_architecture(self) -> None:
        """Raise a `ValueError` naming the first inconsistent setting."""
        if len(self.anchor_sizes) != 5 or len(self.anchor_strides) != 5:
            raise ValueError(
                f"GLIP predicts on 5 levels (P3-P7): anchor_sizes and anchor_strides need 5 entries each, got "
                f"{len(self.anchor_sizes)} and {len(self.anchor_strides)}"
            )
        if self.fpn_channels != self.head_channels:
            raise ValueError(
                f"fpn_channels ({self.fpn_channels}) must equal head_channels ({self.head_channels}): the fusion "
                "layers and DyConvs of GLIP work on the FPN maps directly"
            )
        if self.use_group_norm and self.head_channels % self.group_norm_num_groups:
            raise ValueError(
                f"head_channels ({self.head_channels}) must be divisible by group_norm_num_groups "
                f"({self.group_norm_num_groups})"
            )
        if self.fusion_embed_dim % self.fusion_num_heads:
            raise ValueError(
                f"fusion_embed_dim ({self.fusion_embed_dim}) must be divisible by fusion_num_heads "
                f"({self.fusion_num_heads})"
            )
        if self.use_dyrelu and self.head_channels % 4:
            raise ValueError(f"DyReLU needs head_channels divisible by 4, got {self.head_channels}")
        if self.num_anchors_per_location != 1:
            raise ValueError(
                "GLIP's token logits assume one anchor per location: anchor_aspect_ratios and "
                f"anchor_scales_per_octave give {self.num_anchors_per_location}"
            )
        if not 0 < self.max_text_len <= self.text_config.max_position_embeddings:
            raise ValueError(
                f"max_text_len ({self.max_text_len}) must be between 1 and the text tower's "
                f"max_position_embeddings ({self.text_config.max_position_embeddings})"
            )
        if len(self.box_coder_weights) != 4:
            raise ValueError(f"box_coder_weights needs 4 values (wx, wy, ww, wh), got {self.box_coder_weights}")
        if self.max_prompts_per_pass is not None and self.max_prompts_per_pass < 1:
            raise ValueError(f"max_prompts_per_pass must be None or at least 1, got {self.max_prompts_per_pass}")
        if self.num_dyhead_layers < 1:
            raise ValueError(f"num_dyhead_layers must be at least 1, got {self.num_dyhead_layers}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GlipConfig":
        """Config of a released architecture: "glip-t-a", "glip-t-b", "glip-t-c", "glip-t" or "glip-l".

        Presets reproduce the original exactly, so they switch `legacy_upsampled_offset_reinterpretation` on.
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown GLIP preset {name!r}; choose one of {sorted(PRESETS)}")
        preset = dict(PRESETS[name])
        swin = preset.pop("swin")
        kwargs = dict(
            backbone_config=swin_backbone_config(**swin),
            text_config=BertConfig(),
            legacy_upsampled_offset_reinterpretation=True,
        )
        kwargs.update(preset)
        kwargs.update(overrides)
        return cls(**kwargs)


__all__ = ["GlipConfig", "PRESETS"]
