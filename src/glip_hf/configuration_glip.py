"""GLIP configuration: a composite config with a vision backbone, a BERT text tower and the grounding head."""

from __future__ import annotations

import itertools
import math
import numbers

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


# Field -> (lowest, highest, whether the bounds themselves are allowed); None: unbounded on that side.
INT_FIELDS = {
    "fpn_channels": (1, None), "head_channels": (1, None), "num_dyhead_layers": (1, None),
    "fusion_embed_dim": (1, None), "fusion_num_heads": (1, None), "group_norm_num_groups": (1, None),
    "anchor_scales_per_octave": (1, None), "max_text_len": (1, None), "atss_topk": (1, None),
}
FLOAT_FIELDS = {
    "fusion_attention_dropout": (0.0, 1.0, True), "group_norm_eps": (0.0, None, False),
    "anchor_octave_base": (0.0, None, False), "box_coder_max_log_scale": (None, None, True),
    "prior_prob": (0.0, 1.0, False), "log_scale_init": (None, None, True),
    "focal_alpha": (0.0, 1.0, True), "focal_gamma": (0.0, None, True), "box_loss_weight": (0.0, None, True),
    "init_std": (0.0, None, True), "fusion_layer_scale_init": (None, None, True),
}
BOOL_FIELDS = (
    "early_fusion", "fused_features_dot_product", "fusion_clamp_min", "fusion_clamp_max", "text_layer_clamp_min",
    "text_layer_clamp_max", "clamp_dot_product", "use_dyrelu", "use_deformable_conv", "use_group_norm",
    "use_scale_aware_attention", "legacy_upsampled_offset_reinterpretation", "prompt_tuning",
)
# List field -> (required length or None, element kind, lowest value allowed exclusive).
LIST_FIELDS = {
    "anchor_sizes": (5, "number", 0.0), "anchor_strides": (5, "int", 0), "anchor_aspect_ratios": (None, "number", 0.0),
    "box_coder_weights": (4, "number", 0.0),
}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_int(name, value, lowest, highest=None) -> None:
    if not _is_int(value):
        raise TypeError(f"GlipConfig.{name} must be an integer, got {value!r} ({type(value).__name__})")
    if (lowest is not None and value < lowest) or (highest is not None and value > highest):
        bounds = f"at least {lowest}" if highest is None else f"between {lowest} and {highest}"
        raise ValueError(f"GlipConfig.{name} must be {bounds}, got {value}")


def _check_float(name, value, lowest, highest, inclusive) -> None:
    if not _is_number(value):
        raise TypeError(f"GlipConfig.{name} must be a number, got {value!r} ({type(value).__name__})")
    below = lowest is not None and (value < lowest if inclusive else value <= lowest)
    above = highest is not None and (value > highest if inclusive else value >= highest)
    if not math.isfinite(value) or below or above:
        if lowest is None and highest is None:
            bounds = "finite"
        else:
            left, right = ("[", "]") if inclusive else ("(", ")")
            bounds = f"in {left}{lowest}, {'inf' if highest is None else highest}{right}"
        raise ValueError(f"GlipConfig.{name} must be {bounds}, got {value}")


def _check_list(name, value, length, kind, lowest) -> None:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"GlipConfig.{name} must be a list, got {value!r} ({type(value).__name__})")
    if length is not None and len(value) != length:
        raise ValueError(f"GlipConfig.{name} needs {length} values, got {len(value)}: {list(value)}")
    if not value:
        raise ValueError(f"GlipConfig.{name} must not be empty")
    is_kind = _is_int if kind == "int" else _is_number
    for item in value:
        if not is_kind(item):
            raise TypeError(f"GlipConfig.{name} must hold {'integers' if kind == 'int' else 'numbers'}, "
                            f"got {item!r} in {list(value)}")
        if not math.isfinite(item) or item <= lowest:
            raise ValueError(f"GlipConfig.{name} must hold finite values above {lowest}, got {list(value)}")


def backbone_strides(backbone_config) -> list[int] | None:
    """Strides of a Swin backbone's output stages (patch size x 2^(stage - 1)); None for other backbones."""
    if getattr(backbone_config, "model_type", None) != "swin":
        return None
    patch = backbone_config.patch_size
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return [patch * 2 ** (backbone_config.stage_names.index(stage) - 1) for stage in backbone_config.out_features]


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
    atss_topk: int = 9
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box_loss_weight: float = 2.0
    legacy_upsampled_offset_reinterpretation: bool = False
    prompt_tuning: bool = False
    max_prompts_per_pass: int | None = None
    init_std: float = 0.01

    def __post_init__(self, **kwargs):
        self.check_field_types()
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
            _check_list(name, getattr(self, name), *LIST_FIELDS[name])
        if self.fusion_layer_scale_init is None:
            self.fusion_layer_scale_init = 1.0 / self.num_dyhead_layers
        self._check_sub_config_types()
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

    def check_field_types(self) -> None:
        """Raise a `TypeError` / `ValueError` naming the first field of the wrong type or out of its range."""
        for name in BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"GlipConfig.{name} must be True or False, got {value!r} ({type(value).__name__})")
        for name, (lowest, highest) in INT_FIELDS.items():
            _check_int(name, getattr(self, name), lowest, highest)
        for name, bounds in FLOAT_FIELDS.items():
            if not (name == "fusion_layer_scale_init" and self.fusion_layer_scale_init is None):
                _check_float(name, getattr(self, name), *bounds)
        if self.max_prompts_per_pass is not None:
            _check_int("max_prompts_per_pass", self.max_prompts_per_pass, 1)
        for name in ("backbone_config", "text_config"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (dict, PreTrainedConfig)):
                raise TypeError(f"GlipConfig.{name} must be a dict or a config, got {type(value).__name__}")
        if self.backbone is not None and not isinstance(self.backbone, str):
            raise TypeError(f"GlipConfig.backbone must be a timm model name, got {self.backbone!r}")
        if self.backbone_kwargs is not None and not isinstance(self.backbone_kwargs, dict):
            raise TypeError(f"GlipConfig.backbone_kwargs must be a dict, got {type(self.backbone_kwargs).__name__}")

    def _check_sub_config_types(self) -> None:
        # transformers would fail with a bare KeyError on a model_type it does not know.
        for name in ("backbone_config", "text_config"):
            value = getattr(self, name)
            if isinstance(value, dict) and "model_type" in value and value["model_type"] not in CONFIG_MAPPING:
                raise ValueError(f"GlipConfig.{name} has model_type {value['model_type']!r}, which transformers "
                                 "does not know")

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
        self._check_strides()

    def _check_strides(self) -> None:
        """P3-P7 double in stride (P6, P7 are stride-2 convs); a Swin backbone fixes P3-P5 to its stage strides."""
        strides = list(self.anchor_strides)
        if any(fine * 2 != coarse for fine, coarse in itertools.pairwise(strides)):
            raise ValueError(f"GlipConfig.anchor_strides must double from level to level (P3-P7), got {strides}")
        expected = backbone_strides(self.backbone_config)
        if expected is not None and len(expected) == 3 and strides[:3] != expected:
            raise ValueError(
                f"GlipConfig.anchor_strides {strides} do not match the backbone, whose outputs "
                f"{self.backbone_config.out_features} have strides {expected}"
            )

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
