"""The converter: YAML -> config, the rename table against the full-size key manifests, errors, and the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO_ROOT, require_reference
from transformers import BertConfig

from glip_hf import GlipForGrounding
from glip_hf.conversion_glip import (
    IGNORED_KEYS,
    ConversionError,
    check_against_model,
    config_from_original,
    convert_checkpoint,
    convert_state_dict,
    load_original_checkpoint,
    load_original_yaml,
    rename_key,
)

MANIFESTS = [
    ("glip_t_keys.json", "glip_Swin_T_O365_GoldG.yaml"),
    ("glip_t_a_keys.json", "glip_A_Swin_T_O365.yaml"),
    ("glip_l_keys.json", "glip_Swin_L.yaml"),
]
DTYPES = {"float32": torch.float32, "int64": torch.int64}


def _manifest_state_dict(manifest: dict) -> dict[str, torch.Tensor]:
    """Meta tensors with the manifest's shapes, keyed as in a released file's 'model' entry (prefix removed)."""
    return {
        key.removeprefix("module."): torch.empty(shape, dtype=DTYPES[dtype], device="meta")
        for key, (shape, dtype) in manifest["keys"].items()
    }


def _released_config(yaml_name: str):
    root = require_reference(f"released_configs/{yaml_name}")
    return config_from_original(load_original_yaml(root / "released_configs" / yaml_name))


@pytest.mark.slow
@pytest.mark.parametrize("manifest_name, yaml_name", MANIFESTS)
def test_rename_table_covers_the_full_size_checkpoints(manifest_name, yaml_name):
    root = require_reference(manifest_name)
    manifest = json.loads((root / manifest_name).read_text())
    config = _released_config(yaml_name)
    original = _manifest_state_dict(manifest)
    ignored = [key for key in original if rename_key(key, config) is None]
    # Only structural buffers, the legacy position ids and the unused 80-class logits are dropped.
    assert all(any(re.fullmatch(pattern, key) for pattern, _ in IGNORED_KEYS) for key in ignored)
    assert {key for key in ignored if key.endswith("weight")} <= {
        "rpn.head.cls_logits.weight"
    }
    converted = convert_state_dict(original, config)
    with torch.device("meta"):
        model = GlipForGrounding(config)
    check_against_model(converted, model)  # raises on any missing, unexpected or mis-shaped key
    parameters = dict(model.named_parameters())
    assert set(parameters) <= set(converted), sorted(set(parameters) - set(converted))[:5]
    converted_count = sum(t.numel() for k, t in converted.items() if k in parameters)
    assert converted_count == sum(p.numel() for p in parameters.values())


def test_released_yamls_give_the_documented_architectures():
    tiny_t = _released_config("glip_Swin_T_O365_GoldG.yaml")
    assert (tiny_t.backbone_config.embed_dim, tiny_t.backbone_config.depths) == (96, [2, 2, 6, 2])
    assert tiny_t.early_fusion and tiny_t.fused_features_dot_product and tiny_t.num_dyhead_layers == 6
    assert tiny_t.legacy_upsampled_offset_reinterpretation and tiny_t.clamp_dot_product
    assert tiny_t.anchor_sizes == [64, 128, 256, 512, 1024] and tiny_t.anchor_strides == [8, 16, 32, 64, 128]
    tiny_a = _released_config("glip_A_Swin_T_O365.yaml")
    assert not tiny_a.early_fusion and not tiny_a.fused_features_dot_product
    large = _released_config("glip_Swin_L.yaml")
    assert (large.backbone_config.embed_dim, large.backbone_config.window_size, large.num_dyhead_layers) == (192, 12, 8)
    assert large.backbone_config.depths == [2, 2, 18, 2]


def test_yaml_values_are_merged_over_the_original_defaults(tmp_path):
    path = tmp_path / "partial.yaml"
    path.write_text("MODEL:\n  SWINT:\n    DEPTHS: (2, 2, 18, 2)\n")
    merged = load_original_yaml(path)
    assert merged["MODEL"]["SWINT"]["DEPTHS"] == (2, 2, 18, 2)  # decoded like yacs does
    assert merged["MODEL"]["SWINT"]["EMBED_DIM"] == 96  # from the defaults
    with pytest.raises(ConversionError, match="VLDYHEAD"):
        config_from_original(merged)  # the defaults describe a Mask R-CNN, not GLIP


def _tiny_fixture():
    root = require_reference("glip_tiny_random/original_checkpoint.pth")
    folder = root / "glip_tiny_random"
    return folder, BertConfig.from_json_file(str(folder / "bert_config.json"))


def test_checkpoint_of_the_wrong_variant_is_rejected_with_every_bad_key(tmp_path):
    folder, text_config = _tiny_fixture()
    settings = yaml.safe_load((folder / "original_config.yaml").read_text())
    settings["MODEL"]["DYHEAD"]["FUSE_CONFIG"]["EARLY_FUSE_ON"] = False  # a GLIP-T (A) YAML
    settings["MODEL"]["DYHEAD"]["FUSE_CONFIG"]["USE_FUSED_FEATURES_DOT_PRODUCT"] = False
    wrong_yaml = tmp_path / "variant_a.yaml"
    wrong_yaml.write_text(yaml.safe_dump(settings))
    with pytest.raises(ConversionError) as error:
        convert_checkpoint(folder / "original_checkpoint.pth", wrong_yaml, text_config)
    message = str(error.value)
    assert "rpn.head.dyhead_tower.17." in message and "rpn.head.dyhead_tower.6." in message


def test_mis_shaped_and_missing_keys_are_all_listed():
    folder, text_config = _tiny_fixture()
    config = config_from_original(load_original_yaml(folder / "original_config.yaml"), text_config)
    original = load_original_checkpoint(folder / "original_checkpoint.pth")
    original["rpn.head.bbox_pred.weight"] = torch.zeros(4, 7, 1, 1)
    del original["rpn.head.centerness.bias"]
    model = GlipForGrounding(config)
    with pytest.raises(ConversionError) as error:
        check_against_model(convert_state_dict(original, config), model)
    assert "head.bbox_pred.weight: checkpoint (4, 7, 1, 1)" in str(error.value)
    assert "head.centerness.bias" in str(error.value)


def test_unknown_keys_are_rejected():
    folder, text_config = _tiny_fixture()
    config = config_from_original(load_original_yaml(folder / "original_config.yaml"), text_config)
    original = load_original_checkpoint(folder / "original_checkpoint.pth")
    original["rpn.head.mystery.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="rpn.head.mystery.weight: no rename rule"):
        convert_state_dict(original, config)


def test_text_config_must_match_the_yaml_lang_dim():
    folder, _ = _tiny_fixture()
    with pytest.raises(ConversionError, match="LANG_DIM 32 differs"):
        config_from_original(load_original_yaml(folder / "original_config.yaml"), BertConfig())


def test_first_convolution_is_flipped_to_rgb():
    folder, text_config = _tiny_fixture()
    config = config_from_original(load_original_yaml(folder / "original_config.yaml"), text_config)
    original = load_original_checkpoint(folder / "original_checkpoint.pth")
    converted = convert_state_dict(original, config)
    ours = converted["model.vision_backbone.backbone.swin.embeddings.patch_embeddings.projection.weight"]
    assert torch.equal(ours, original["backbone.body.patch_embed.proj.weight"][:, [2, 1, 0]])
    qkv = original["backbone.body.layers.0.blocks.0.attn.qkv.weight"]
    prefix = "model.vision_backbone.backbone.swin.encoder.layers.0.blocks.0.attention."
    assert torch.equal(torch.cat([converted[prefix + f"{n}_proj.weight"] for n in "qkv"]), qkv)


def test_command_line_converter_writes_a_loadable_folder(converted_reference_dir):
    folder, text_config = _tiny_fixture()
    output = converted_reference_dir  # written by convert/convert_glip_to_hf.py (conftest)
    for name in ("model.safetensors", "config.json", "processor_config.json", "tokenizer.json"):
        assert (output / name).is_file(), name
    reloaded = GlipForGrounding.from_pretrained(output).eval()
    in_memory = convert_checkpoint(folder / "original_checkpoint.pth", folder / "original_config.yaml", text_config)
    for (name, ours), theirs in zip(reloaded.state_dict().items(), in_memory.state_dict().values()):
        assert torch.equal(ours, theirs), name
    assert reloaded.config.legacy_upsampled_offset_reinterpretation


def test_command_line_converter_explains_a_failure(tmp_path):
    folder, _ = _tiny_fixture()
    command = [
        sys.executable, str(REPO_ROOT / "convert" / "convert_glip_to_hf.py"),
        "--checkpoint", str(folder / "original_checkpoint.pth"), "--config", str(folder / "original_config.yaml"),
        "--output-dir", str(tmp_path / "out"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "LANG_DIM 32 differs" in result.stderr and "--text-config" in result.stderr
    missing = subprocess.run(command[:3] + ["missing.pth"] + command[4:], capture_output=True, text=True, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
