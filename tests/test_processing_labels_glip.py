"""GlipProcessor as the one input path of training and evaluation: `annotations` -> `labels`, the collator built on
it, and the post-processing settings the processor owns."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from glip_hf import GlipImageProcessor, GlipImageProcessorFast, GlipProcessor
from glip_hf.data_glip import GlipDataCollator, GlipTrainTransform
from glip_hf.processing_glip import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def processor(tokenizer):
    return GlipProcessor(GlipImageProcessor(size={"shortest_edge": 40, "longest_edge": 1333}), tokenizer)


def _tokens(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_annotations_become_labels_in_the_resized_frame(processor, tokenizer):
    captions = ["a man with a hat", "a dog"]
    annotations = [{"boxes": [[10, 20, 39, 59], [50, 10, 99, 79], [0, 0, 9, 9]], "spans": [[[0, 5]], [[13, 16]], [[0, 5]]]},
                   {"boxes": [], "spans": []}]
    batch = processor(images=[Image.new("RGB", (100, 80)), Image.new("RGB", (64, 48))], text=captions,
                      annotations=annotations)
    length = batch["input_ids"].shape[1]
    first, second = batch["labels"]
    # 100 x 80 -> 50 x 40: boxes scale by 0.5 with their image.
    assert batch["image_sizes"].tolist() == [[40, 50], [40, 53]]
    assert first["boxes"].dtype == torch.float32
    assert first["boxes"].tolist() == [[5.0, 10.0, 19.5, 29.5], [25.0, 5.0, 49.5, 39.5], [0.0, 0.0, 4.5, 4.5]]
    for row, phrase in zip(first["token_map"], ["a man", "hat", "a man"]):
        assert batch["input_ids"][0][row.bool()].tolist() == _tokens(tokenizer, phrase)
    assert second["boxes"].shape == (0, 4) and second["token_map"].shape == (0, length)
    # The phrases scored after the model: the boxes' distinct phrases, or the whole caption without boxes.
    assert batch["text_labels"] == [["a man", "hat"], ["a dog"]]
    assert batch["label_ids"].tolist() == [[0, 1], [0, -1]]
    assert torch.equal(batch["token_maps"][0, :2], first["token_map"][:2])


def test_annotations_without_resize_keep_the_boxes(processor):
    annotation = {"boxes": [[10.25, 20, 39, 59]], "spans": [[[2, 5]]]}
    batch = processor(images=Image.new("RGB", (100, 80)), text="a man", annotations=annotation, do_resize=False)
    assert batch["labels"][0]["boxes"].tolist() == [[10.25, 20.0, 39.0, 59.0]]
    assert batch["image_sizes"].tolist() == [[80, 100]] and batch["pixel_values"].shape[-2:] == (96, 128)


@pytest.mark.parametrize(("text", "annotations", "error", "message"), [
    (["a cat", "a dog"], [{"boxes": [], "spans": []}], ValueError, "one annotation per image"),
    ("a cat", {"boxes": [[0, 0, 5, 5]], "spans": []}, ValueError, "1 box"),
    ("a cat", {"boxes": [[0, 0, 5, 5]], "spans": [[[2, 9]]]}, ValueError, "outside the caption"),
    ("a cat", {"boxes": [[0, 0, 5, float("nan")]], "spans": [[[2, 5]]]}, ValueError, "finite"),
    ("a cat", {"boxes": [[0, 0, 5, 5]]}, TypeError, "'boxes' and 'spans'"),
    (["cat", "dog"], {"boxes": [[0, 0, 5, 5]], "spans": [[[0, 3]]]}, TypeError, "caption string"),
])
def test_bad_annotations_are_refused(processor, text, annotations, error, message):
    images = Image.new("RGB", (20, 20)) if isinstance(text, str) or text == ["cat", "dog"] else [
        Image.new("RGB", (20, 20))] * 2
    with pytest.raises(error, match=message):
        processor(images=images, text=text, annotations=annotations)


def test_collator_is_the_processor_after_reading_and_clipping(processor):
    example = {"image": Image.new("RGB", (100, 80), (30, 60, 90)), "image_id": 3, "caption": "a man with a hat",
               "boxes": [[10, 20, 39, 59], [120, 5, 150, 30], [90, 10, 130, 70]], "spans": [[[0, 5]], [[13, 16]], [[13, 16]]],
               "category_ids": [-1, -1, -1]}
    batch = GlipDataCollator(processor, train=False)([example])
    # The second box lies outside the image and is dropped; the third is clipped to x2 = 99.
    expected = processor(images=example["image"], text=example["caption"],
                         annotations={"boxes": [[10, 20, 39, 59], [90, 10, 99, 70]], "spans": [[[0, 5]], [[13, 16]]]})
    for key in ("pixel_values", "pixel_mask", "input_ids", "attention_mask", "token_maps", "image_sizes"):
        assert torch.equal(batch[key], expected[key]), key
    for ours, theirs in zip(batch["labels"], expected["labels"]):
        assert torch.equal(ours["boxes"], theirs["boxes"]) and torch.equal(ours["token_map"], theirs["token_map"])
    assert batch["image_ids"].tolist() == [3]


def test_collator_with_class_names_prompts_every_image_alike(processor):
    examples = [{"image": Image.new("RGB", (40, 40)), "image_id": 7}, {"image": Image.new("RGB", (60, 40)), "image_id": 9}]
    batch = GlipDataCollator(processor, train=False, class_names=["cat", "teddy bear"])(examples)
    expected = processor(images=[e["image"] for e in examples], text=[["cat", "teddy bear"]] * 2)
    assert "labels" not in batch and batch["image_ids"].tolist() == [7, 9]
    for key in ("pixel_values", "input_ids", "token_maps", "label_ids", "image_index"):
        assert torch.equal(batch[key], expected[key]), key
    assert batch["text_labels"] == [["cat", "teddy bear"]] * 2


def test_training_collator_transforms_before_the_processor(processor):
    example = {"image": Image.new("RGB", (100, 80)), "image_id": 1, "caption": "a man",
               "boxes": [[10, 20, 39, 59]], "spans": [[[0, 5]]], "category_ids": [-1]}
    batch = GlipDataCollator(processor, transform=GlipTrainTransform(min_sizes=(20,), flip_prob=0.0))([example])
    # Resized to 25 x 20 by the transform (ratio 0.25), not again by the processor's test-time resize to 40.
    assert batch["image_sizes"].tolist() == [[20, 25]]
    assert batch["labels"][0]["boxes"].tolist() == [[2.5, 5.0, 9.75, 14.75]]


def test_device_argument_runs_the_fast_image_processor(processor):
    image = Image.new("RGB", (40, 40), (10, 200, 30))  # no resize at shortest edge 40: both backends agree exactly
    exact, fast = processor(images=image, text="a cat"), processor(images=image, text="a cat", device="cpu")
    assert torch.equal(exact["pixel_values"], fast["pixel_values"])
    assert isinstance(processor._image_processor_for("cpu"), GlipImageProcessorFast)
    assert dict(processor._image_processor_for("cpu").size) == dict(processor.image_processor.size)


def test_post_processing_settings_live_on_the_processor(tokenizer, tmp_path):
    processor = GlipProcessor(GlipImageProcessor(), tokenizer, candidate_threshold=0.3, pre_nms_top_n=50,
                              nms_threshold=0.5, detections_per_image=7)
    processor.save_pretrained(tmp_path)
    loaded = GlipProcessor.from_pretrained(tmp_path)
    assert (loaded.candidate_threshold, loaded.pre_nms_top_n, loaded.nms_threshold, loaded.detections_per_image) == (
        0.3, 50, 0.5, 7)
    for settings, message in [({"candidate_threshold": 1.5}, "candidate_threshold"),
                              ({"nms_threshold": -0.1}, "nms_threshold"),
                              ({"pre_nms_top_n": 0}, "pre_nms_top_n"),
                              ({"detections_per_image": 2.5}, "detections_per_image")]:
        with pytest.raises(ValueError, match=message):
            GlipProcessor(GlipImageProcessor(), tokenizer, **settings)
