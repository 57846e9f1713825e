"""Bad and unusual inputs to the Python API: each is refused with a message naming it, or handled as a user
expects, never silently wrong (prompts, images, post-processing, GlipConfig, the converter, fine-tuning data)."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import REFERENCE_DIR, REPO_ROOT, require_reference, tiny_config
from PIL import Image

from glip_hf import GlipConfig, GlipImageProcessor, GlipProcessor
from glip_hf.conversion_glip import ConversionError, load_original_checkpoint, load_original_yaml
from glip_hf.data_glip import coco_detection_examples
from glip_hf.postprocessing_glip import post_process_grounding
from glip_hf.processing_glip import load_tokenizer

SEP_ID, CLS_ID, PAD_ID = 102, 101, 0


@pytest.fixture(scope="module")
def processor():
    image_processor = GlipImageProcessor(size={"shortest_edge": 128, "longest_edge": 192})
    return GlipProcessor(image_processor, load_tokenizer(), max_text_len=32)


def _image(width=48, height=32):
    return Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8))


def _marked(row) -> list[int]:
    return row.nonzero().flatten().tolist()


# ----- prompts -----------------------------------------------------------------------------------------------------

def test_phrases_match_whole_words_by_default_and_substrings_on_request(processor):
    caption = "a woman and a man"
    words = processor(text=caption, phrases=["man"])
    tokens = processor.tokenizer(caption)["input_ids"]
    assert _marked(words["token_maps"][0, 0]) == [len(tokens) - 2]  # "man" only, the last word
    substrings = processor(text=caption, phrases=["man"], phrase_match="substring")
    assert len(_marked(substrings["token_maps"][0, 0])) == 2  # "woman" too, as the original
    with pytest.raises(ValueError, match="as a whole word.*phrase_match='substring'"):
        processor(text="a woman", phrases=["man"])


@pytest.mark.parametrize("names", [["cat", "dog", "cat"], ["cat", "Cat"], ["traffic_light", "traffic light"]])
def test_duplicate_class_names_are_refused_not_reported_twice(processor, names):
    with pytest.raises(ValueError, match="same phrase.*reported twice") as info:
        processor(images=_image(), text=names)
    assert repr(names[0]) in str(info.value)


def test_repeated_phrases_are_refused(processor):
    with pytest.raises(ValueError, match="same phrase"):
        processor(text="a cat on a mat", phrases=["a cat", "a cat"])


@pytest.mark.parametrize("name", ["[SEP]", "[PAD]", "[CLS]", "my [SEP] box"])
def test_special_token_text_in_class_names_stays_text(processor, name):
    inputs = processor(text=[name, "dog"])
    ids = inputs["input_ids"][0].tolist()
    assert ids[0] == CLS_ID and ids.count(CLS_ID) == 1 and ids.count(SEP_ID) == 1 and PAD_ID not in ids
    marked = _marked(inputs["token_maps"][0, 0])
    assert len(marked) == len(processor.tokenizer.tokenize(name, split_special_tokens=True))


@pytest.mark.parametrize("text, error, message", [
    ("a \ud800 cat", ValueError, "lone surrogate"),
    (["cat", "d\udcffog"], ValueError, "lone surrogate"),
    (b"a cat", TypeError, "decode it"),
    (5, TypeError, "got int 5"),
    ({"cat": 0}, TypeError, "got dict"),
    ([], ValueError, "empty"),
])
def test_prompts_of_the_wrong_kind_are_named(processor, text, error, message):
    with pytest.raises(error, match=message):
        processor(images=_image(), text=text)


def test_an_empty_image_list_is_refused(processor):
    with pytest.raises(ValueError, match="images is an empty list"):
        processor(images=[], text=[])


@pytest.mark.parametrize("size", [(5000, 1), (5000, 2), (1, 9000)])
def test_images_whose_short_side_vanishes_in_the_resize_are_named(processor, size):
    with pytest.raises(ValueError, match=rf"{size[0]}x{size[1]} pixels.*short side vanishes"):
        processor(images=_image(*size), text="cat")


# ----- post-processing ---------------------------------------------------------------------------------------------

def _fake_outputs(inputs, seed=0, anchors=(4, 2)):
    generator = torch.Generator().manual_seed(seed)
    rows, length = inputs["input_ids"].shape
    count = anchors[0] * anchors[1]
    boxes = torch.rand(rows, count, 2, generator=generator) * 100
    return SimpleNamespace(
        logits=torch.randn(rows, count, length, generator=generator) + 2,
        centerness=torch.randn(rows, count, generator=generator),
        pred_boxes=torch.cat((boxes, boxes + 20), -1),
        spatial_shapes=torch.tensor([list(anchors)]),
    )


@pytest.fixture
def batch(processor):
    inputs = processor(images=[_image(), _image(64, 48)], text=[["cat", "dog"], "a bird"])
    return inputs, _fake_outputs(inputs)


@pytest.mark.parametrize("target_sizes, message", [
    ([[100, 100]], r"one \(height, width\) per image"),
    ([100, 100], r"one \(height, width\) per image"),
    ([[100, 0], [50, 50]], "positive and finite"),
    ([[100, -4], [50, 50]], "positive and finite"),
    ([[100, math.nan], [50, 50]], "positive and finite"),
])
def test_target_sizes_must_match_the_batch(processor, batch, target_sizes, message):
    inputs, outputs = batch
    with pytest.raises(ValueError, match=message):
        processor.post_process_grounded_object_detection(outputs, inputs, target_sizes=target_sizes)


def test_target_sizes_scale_each_image_by_its_own_size(processor, batch):
    inputs, outputs = batch
    default = processor.post_process_grounded_object_detection(outputs, inputs)
    doubled = processor.post_process_grounded_object_detection(outputs, inputs,
                                                              target_sizes=inputs["original_sizes"] * 2)
    for plain, scaled in zip(default, doubled):
        torch.testing.assert_close(scaled["boxes"], plain["boxes"] * 2)


@pytest.mark.parametrize("threshold", [-0.01, 1.5, math.nan, math.inf])
def test_thresholds_outside_zero_one_are_refused(processor, batch, threshold):
    inputs, outputs = batch
    with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\]"):
        processor.post_process_grounded_object_detection(outputs, inputs, threshold=threshold)
    with pytest.raises(ValueError, match="candidate_threshold"):
        processor.post_process_grounded_object_detection(outputs, inputs, candidate_threshold=threshold)


def test_inputs_of_another_batch_are_refused(processor, batch):
    _, outputs = batch
    other = processor(images=[_image()], text=["cat"])
    with pytest.raises(ValueError, match="pass the inputs of the batch the model ran on"):
        processor.post_process_grounded_object_detection(outputs, other)


@pytest.mark.parametrize("field", ["logits", "centerness", "pred_boxes"])
def test_non_finite_outputs_are_an_error_not_an_empty_result(processor, batch, field):
    inputs, outputs = batch
    getattr(outputs, field).view(-1)[3] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        processor.post_process_grounded_object_detection(outputs, inputs)


def test_low_level_post_processing_checks_its_thresholds_too():
    scores = torch.rand(1, 4, 2)
    with pytest.raises(ValueError, match="nms_threshold"):
        post_process_grounding(scores, torch.zeros(1, 4), torch.zeros(1, 4, 4), torch.tensor([[2, 2]]),
                               torch.tensor([[16, 16]]), nms_threshold=5)


# ----- GlipConfig --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, error", [
    ("use_deformable_conv", "false", TypeError),
    ("early_fusion", 1, TypeError),
    ("anchor_sizes", [-64, 128, 256, 512, 1024], ValueError),
    ("anchor_strides", [4, 8, 16, 32, 64], ValueError),
    ("anchor_strides", [0, 16, 32, 64, 128], ValueError),
    ("anchor_strides", [8, 16, 32, 64, 100], ValueError),
    ("fusion_attention_dropout", 2.0, ValueError),
    ("fpn_channels", -32, ValueError),
    ("fusion_num_heads", 0, ValueError),
    ("group_norm_num_groups", 0, ValueError),
    ("num_dyhead_layers", 2.5, TypeError),
    ("prior_prob", 0.0, ValueError),
    ("focal_gamma", math.nan, ValueError),
    ("max_prompts_per_pass", 0, ValueError),
    ("box_coder_weights", [10.0, 10.0, 5.0], ValueError),
])
def test_config_fields_are_checked_by_type_and_range(field, value, error):
    overrides = {field: value}
    if field == "fpn_channels":
        overrides["head_channels"] = value
    with pytest.raises(error, match=rf"GlipConfig\.{field}"):
        tiny_config(**overrides)


def test_an_unknown_backbone_model_type_is_named():
    with pytest.raises(ValueError, match="backbone_config has model_type 'no-such-model'"):
        tiny_config(backbone_config={"model_type": "no-such-model"})


def test_valid_configs_still_load(tmp_path):
    for preset in ("glip-t", "glip-t-a", "glip-l"):
        GlipConfig.from_preset(preset)
    config = tiny_config(fusion_attention_dropout=0, focal_gamma=2)  # ints where floats are expected
    config.save_pretrained(tmp_path)
    assert GlipConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()


# ----- converter ---------------------------------------------------------------------------------------------------

def _fixture_yaml(tmp_path, edit):
    root = require_reference("glip_tiny_random/original_config.yaml")
    settings = yaml.safe_load((root / "glip_tiny_random" / "original_config.yaml").read_text())
    edit(settings)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["MODEL"]["DYHEAD"]["FUSE_CONFIG"].update(CLAMP_DOT_PRODUCT="Flase"),
     "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_DOT_PRODUCT must be True or False"),
    (lambda s: s["INPUT"].update(MIN_SIZE_TST=600), "unknown key INPUT.MIN_SIZE_TST.*did you mean INPUT.MIN_SIZE_TEST"),
    (lambda s: s["MODEL"]["RPN"].update(OCTAVE=2), "MODEL.RPN.OCTAVE must be a float"),
    (lambda s: s["MODEL"].update(RPN=5), "MODEL.RPN must be a section"),
])
def test_yaml_is_checked_like_yacs(tmp_path, edit, message):
    path = _fixture_yaml(tmp_path, edit)
    with pytest.raises(ConversionError, match=message) as info:
        load_original_yaml(path)
    assert str(path) in str(info.value)


def test_released_yamls_pass_the_check():
    require_reference("released_configs/glip_Swin_L.yaml")
    for path in sorted((REFERENCE_DIR / "released_configs").glob("*.yaml")):
        assert load_original_yaml(path)["MODEL"]["RPN_ARCHITECTURE"] == "VLDYHEAD"


@pytest.mark.parametrize("content, message", [("- a\n- b\n", "must hold a mapping"),
                                              ("MODEL: [unclosed\n", "is not valid YAML")])
def test_yaml_that_is_not_a_mapping_is_named(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConversionError, match=message):
        load_original_yaml(path)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"])
def test_empty_or_truncated_checkpoints_are_named(tmp_path, content):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(ConversionError, match=f"cannot read the checkpoint {path}"):
        load_original_checkpoint(path)


@pytest.mark.parametrize("problem", ["text config", "output file"])
def test_converter_command_names_bad_files(tmp_path, problem):
    root = require_reference("glip_tiny_random/original_checkpoint.pth") / "glip_tiny_random"
    text_config, output = root / "bert_config.json", tmp_path / "out"
    if problem == "text config":
        text_config = tmp_path / "bert.json"
        text_config.write_text("hidden_size: 32")
    else:
        output.write_text("a file")
    command = [sys.executable, str(REPO_ROOT / "convert" / "convert_glip_to_hf.py"),
               "--checkpoint", str(root / "original_checkpoint.pth"), "--config", str(root / "original_config.yaml"),
               "--text-config", str(text_config), "--output-dir", str(output)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert ("is not a JSON file" if problem == "text config" else "a file is in the way") in result.stderr


# ----- fine-tuning data --------------------------------------------------------------------------------------------

def _coco(tmp_path, boxes, images=None, declared=(40, 30)):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    images = images or [{"id": 1, "file_name": "a.png", "width": declared[0], "height": declared[1]}]
    annotations = [{"id": i, "image_id": image_id, "category_id": 1, "bbox": box}
                   for i, (image_id, box) in enumerate(boxes)]
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "cat"}]}))
    return path


def test_dropped_and_clipped_boxes_are_summarised(tmp_path, caplog):
    good, clipped = [2, 2, 10, 10], [30, 20, 20, 20]
    path = _coco(tmp_path, [(1, good), (1, clipped), (1, [5, 5, 0, 8]), (1, [5, 5, -3, 4]), (1, [math.nan, 1, 4, 4]),
                            (1, [100, 100, 5, 5]), (7, good)])
    with caplog.at_level(logging.WARNING, logger="glip_hf.data_glip"):
        [row] = list(coco_detection_examples(path, tmp_path, fixed_prompt=True))
    assert row["boxes"] == [[2, 2, 11, 11], [30, 20, 39, 29]]
    summary = caplog.text
    assert "2 box(es) kept, 1 of them clipped" in summary
    assert "dropped 2 boxes of zero, negative or one-pixel width or height" in summary
    assert "dropped 1 boxes with NaN" in summary and "dropped 1 boxes entirely outside" in summary
    assert "dropped 1 annotations of an image id not in the file's images (e.g. annotation 6 -> image 7)" in summary


def test_nothing_usable_is_an_error(tmp_path):
    path = _coco(tmp_path, [(1, [5, 5, 0, 8]), (3, [1, 1, 5, 5])])
    with pytest.raises(ValueError, match="No usable box is left"):
        list(coco_detection_examples(path, tmp_path, fixed_prompt=True))


def test_declared_sizes_are_checked_against_the_file(tmp_path):
    path = _coco(tmp_path, [(1, [2, 2, 10, 10])], declared=(400, 300))
    with pytest.raises(ValueError, match="declared 400x300 but the file is 40x30"):
        list(coco_detection_examples(path, tmp_path, fixed_prompt=True))


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_weights_file_names_the_folder(tmp_path, damage):
    from glip_hf import GlipForGrounding

    GlipForGrounding(tiny_config()).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"" if damage == "empty" else weights.read_bytes()[:1000])
    with pytest.raises(OSError, match=f"cannot read the weights in {tmp_path}: the safetensors file is empty"):
        GlipForGrounding.from_pretrained(tmp_path)
