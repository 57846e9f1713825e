"""`GlipConfig`: validation that names the inconsistent field, presets of the released variants, dict round trip.

transformers' `ConfigTester` is not used: it lives in the transformers repository's tests/ folder, not in the wheel.
"""

from __future__ import annotations

import pytest
from conftest import tiny_config
from transformers import BertConfig

from glip_hf import GlipConfig


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(fpn_channels=64), "fpn_channels"),
        (dict(group_norm_num_groups=5), "group_norm_num_groups"),
        (dict(anchor_sizes=[32, 64, 128, 256]), "anchor_sizes"),
        (dict(anchor_strides=[8, 16, 32, 64, 128, 256]), "anchor_strides"),
        (dict(fusion_embed_dim=64, fusion_num_heads=5), "fusion_num_heads"),
        (dict(max_text_len=65), "max_text_len"),
        (dict(box_coder_weights=[10.0, 10.0, 5.0]), "box_coder_weights"),
        (dict(num_dyhead_layers=0), "num_dyhead_layers"),
    ],
)
def test_inconsistent_config_raises_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


def test_group_norm_groups_are_not_checked_when_group_norm_is_off():
    config = tiny_config(use_group_norm=False, group_norm_num_groups=5)
    assert config.group_norm_num_groups == 5


def test_presets():
    glip_t_a = GlipConfig.from_preset("glip-t-a")
    assert glip_t_a.early_fusion is False
    assert glip_t_a.fused_features_dot_product is False
    assert glip_t_a.has_text_layer == [False] * glip_t_a.num_dyhead_layers
    assert glip_t_a.legacy_upsampled_offset_reinterpretation is True

    glip_t = GlipConfig.from_preset("glip-t")
    assert glip_t.early_fusion is True and glip_t.fused_features_dot_product is True
    assert glip_t.backbone_config.embed_dim == 96 and glip_t.backbone_config.window_size == 7
    assert glip_t.num_dyhead_layers == 6

    glip_l = GlipConfig.from_preset("glip-l")
    assert glip_l.backbone_config.window_size == 12
    assert glip_l.backbone_config.embed_dim == 192
    assert glip_l.backbone_config.depths == [2, 2, 18, 2]
    assert glip_l.num_dyhead_layers == 8
    assert glip_l.backbone_config.out_features == ["stage2", "stage3", "stage4"]

    assert GlipConfig.from_preset("glip-t", max_text_len=128).max_text_len == 128
    with pytest.raises(ValueError, match=r"Unknown GLIP preset 'glip-xl'"):
        GlipConfig.from_preset("glip-xl")


def test_config_dict_round_trip_keeps_sub_configs():
    config = tiny_config(num_dyhead_layers=3, early_fusion=False, anchor_sizes=[32, 64, 128, 256, 512])
    restored = GlipConfig.from_dict(config.to_dict())

    assert restored.to_dict() == config.to_dict()
    assert restored.backbone_config.model_type == "swin"
    assert restored.backbone_config.to_dict() == config.backbone_config.to_dict()
    assert restored.backbone_config.out_features == ["stage2", "stage3", "stage4"]
    assert isinstance(restored.text_config, BertConfig)
    assert restored.text_config.to_dict() == config.text_config.to_dict()
    assert restored.text_config.vocab_size == 1000
    assert restored.anchor_sizes == [32, 64, 128, 256, 512]
    assert restored.early_fusion is False and restored.num_dyhead_layers == 3
