"""`speed_glip`: each device-specific setting is read at call time, and every choice it makes computes the same."""

from __future__ import annotations

import torch
from torchvision.ops import deform_conv2d

from glip_hf import speed_glip
from glip_hf.deform_conv_glip import ModulatedDeformConv2d


def _conv_operands(channels=48):
    generator = torch.Generator().manual_seed(0)
    conv = ModulatedDeformConv2d(channels, 8, stride=1)
    with torch.no_grad():
        conv.weight.normal_(0, 0.1, generator=generator)
        conv.bias.normal_(0, 0.1, generator=generator)
    x = torch.randn(2, channels, 9, 10, generator=generator)
    offset = torch.randn(2, 18, 9, 10, generator=generator) * 2
    mask = torch.rand(2, 9, 9, 10, generator=generator)
    return conv, x, offset, mask


def test_channel_groups_follow_the_setting_and_keep_the_result(monkeypatch):
    conv, x, offset, mask = _conv_operands()
    expected = deform_conv2d(x, offset, conv.weight, conv.bias, padding=1, mask=mask)
    for channels_per_group, groups in ((16, 3), (8, 6), (0, 1), (32, 1)):  # 32 does not divide 48: whole
        monkeypatch.setattr(speed_glip, "CPU_CHANNELS_PER_GROUP", channels_per_group)
        assert speed_glip.grid_sample_channel_groups(x) == groups
        with torch.no_grad():
            torch.testing.assert_close(conv(x, offset, mask), expected, atol=1e-5, rtol=1e-5)


def test_the_deformable_conv_runs_where_the_setting_says(monkeypatch):
    conv, x, offset, mask = _conv_operands(channels=16)
    calls = []
    real = speed_glip.deform_conv_uses_torchvision
    monkeypatch.setattr("glip_hf.deform_conv_glip.deform_conv_uses_torchvision",
                        lambda tensor: calls.append(real(tensor)) or real(tensor))
    with torch.no_grad():
        sampled = conv(x, offset, mask)
        monkeypatch.setattr(speed_glip, "TORCHVISION_DEFORM_CONV_DEVICES", ("cuda", "cpu"))
        kernel = conv(x, offset, mask)
    assert calls == [False, True]
    torch.testing.assert_close(sampled, kernel, atol=1e-5, rtol=1e-5)


def test_prompt_rows_per_pass_and_the_cross_attention_form(monkeypatch):
    pixels = torch.zeros(1, 3, 256, 256)
    assert speed_glip.prompt_rows_per_pass(pixels, rows=10) == 4  # 512 x 512 pixels of 256 x 256 rows
    monkeypatch.setattr(speed_glip, "CPU_PIXELS_PER_PASS", 100)
    assert speed_glip.prompt_rows_per_pass(pixels, rows=10) == 1
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert speed_glip.cross_attention_form("eager", cpu) == "eager"
    assert (speed_glip.cross_attention_form("sdpa", cpu), speed_glip.cross_attention_form("sdpa", cuda)) == (
        "folded", "sdpa")
    monkeypatch.setattr(speed_glip, "FOLDED_CROSS_ATTENTION_DEVICES", ())
    assert speed_glip.cross_attention_form("sdpa", cpu) == "sdpa"
