"""Tests for glip_hf.data_glip: converters into the grounding schema, the train transform and the collator."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

pytest.importorskip("datasets")

from glip_hf.data_glip import (  # noqa: E402
    GROUNDING_FEATURES, GlipDataCollator, GlipTrainTransform, build_grounding_dataset, coco_category_prompt,
    coco_detection_examples, load_example_image, mdetr_examples, odvg_examples, sample_detection_caption,
)
from glip_hf.image_processing_glip import GlipImageProcessor  # noqa: E402
from glip_hf.processing_glip import GlipProcessor, load_tokenizer  # noqa: E402

CATEGORIES = [
    {"id": 3, "name": "dog"}, {"id": 1, "name": "cat"}, {"id": 7, "name": "teddy_bear"}, {"id": 9, "name": "bus"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture
def processor(tokenizer):
    return GlipProcessor(GlipImageProcessor(), tokenizer)


def _write_image(path, width, height, colour=(200, 30, 60)):
    Image.new("RGB", (width, height), colour).save(path)
    return path


@pytest.fixture
def coco_files(tmp_path):
    """Three images: boxes of several classes, no annotations at all, and only a crowd box."""
    for name, size in (("a.png", (100, 80)), ("b.png", (64, 48)), ("c.png", (50, 40))):
        _write_image(tmp_path / name, *size)
    index = {
        "images": [
            {"id": 12, "file_name": "b.png", "width": 64, "height": 48},
            {"id": 5, "file_name": "a.png", "width": 100, "height": 80},
            {"id": 20, "file_name": "c.png", "width": 50, "height": 40},
        ],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 1, "bbox": [10, 20, 30, 40], "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 7, "bbox": [90, 70, 20, 20], "iscrowd": 0},  # clamped
            {"id": 3, "image_id": 5, "category_id": 1, "bbox": [-5, 5, 10, 10], "iscrowd": 0},  # clamped at 0
            {"id": 4, "image_id": 5, "category_id": 3, "bbox": [50, 50, 1, 10], "iscrowd": 0},  # x2 == x1: dropped
            {"id": 5, "image_id": 5, "category_id": 9, "bbox": [0, 0, 20, 20], "iscrowd": 1},  # crowd: dropped
            {"id": 6, "image_id": 20, "category_id": 9, "bbox": [1, 1, 20, 20], "iscrowd": 1},
        ],
        "categories": CATEGORIES,
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(index))
    return path, tmp_path


def _check_spans(example):
    for spans in example["spans"]:
        for start, end in spans:
            assert 0 <= start < end <= len(example["caption"])


# ----- schema and converters ---------------------------------------------------------------------------------------

def test_schema_columns():
    assert list(GROUNDING_FEATURES) == ["image", "image_id", "caption", "boxes", "spans", "category_ids"]
    assert GROUNDING_FEATURES["image_id"].dtype == "int64"
    assert GROUNDING_FEATURES["boxes"].feature.length == 4
    assert GROUNDING_FEATURES["boxes"].feature.feature.dtype == "float32"
    assert GROUNDING_FEATURES["spans"].feature.feature.length == 2


def test_coco_boxes_follow_inclusive_convention(coco_files):
    annotation_file, image_dir = coco_files
    rows = {row["image_id"]: row for row in coco_detection_examples(annotation_file, image_dir, fixed_prompt=True)}
    assert list(rows) == [5, 12, 20]  # all images kept, in id order
    row = rows[5]
    # [x, y, w, h] -> [x, y, x + w - 1, y + h - 1], clamped to [0, 99] x [0, 79]; crowd and degenerate boxes dropped.
    assert row["boxes"] == [[10, 20, 39, 59], [90, 70, 99, 79], [0, 5, 4, 14]]
    assert row["category_ids"] == [1, 7, 1]
    assert row["image"] == str(image_dir / "a.png")


def test_coco_category_prompt_is_in_id_order():
    caption, spans, ids = coco_category_prompt(CATEGORIES)
    assert caption == "cat. dog. teddy bear. bus"
    assert ids == [1, 3, 7, 9]
    assert [caption[s:e] for [(s, e)] in spans] == ["cat", "dog", "teddy bear", "bus"]
    assert coco_category_prompt({9: "bus", 1: "cat"})[0] == "cat. bus"


def test_fixed_prompt_spans_slice_to_class_names(coco_files):
    annotation_file, image_dir = coco_files
    row = next(coco_detection_examples(annotation_file, image_dir, fixed_prompt=True))
    assert row["caption"] == "cat. dog. teddy bear. bus"
    assert [[row["caption"][s:e] for s, e in spans] for spans in row["spans"]] == [["cat"], ["teddy bear"], ["cat"]]


def test_sampled_caption_contains_positives_and_negatives(coco_files, tokenizer):
    annotation_file, image_dir = coco_files
    rows = list(coco_detection_examples(annotation_file, image_dir, tokenizer=tokenizer, num_negatives=10,
                                        full_negative_prob=1.0, seed=3))
    names = {"cat", "dog", "teddy bear", "bus"}
    for row in rows:
        parts = row["caption"].split(". ")
        # All classes are drawn (10 > 4), each once, in a shuffled order, positives included.
        assert sorted(parts) == sorted(names)
        _check_spans(row)
        for spans, category in zip(row["spans"], row["category_ids"]):
            expected = {1: "cat", 3: "dog", 7: "teddy bear", 9: "bus"}[category]
            assert [row["caption"][s:e] for s, e in spans] == [expected]
    orders = {tuple(row["caption"].split(". ")) for seed in range(6)
              for row in coco_detection_examples(annotation_file, image_dir, tokenizer=tokenizer, seed=seed)}
    assert len(orders) > 1  # shuffled


def test_images_without_boxes_are_kept_with_negatives(coco_files, tokenizer):
    annotation_file, image_dir = coco_files
    rows = {row["image_id"]: row for row in coco_detection_examples(annotation_file, image_dir, tokenizer=tokenizer)}
    for image_id in (12, 20):  # no annotations / only a crowd box
        assert rows[image_id]["boxes"] == [] and rows[image_id]["spans"] == []
        assert rows[image_id]["caption"]  # at least one negative class
    skipped = [row["image_id"] for row in coco_detection_examples(annotation_file, image_dir, tokenizer=tokenizer,
                                                                 skip_empty=True)]
    assert skipped == [5]


def _many_categories():
    colours = ["red", "green", "blue", "yellow", "black", "white"]
    animals = ["cat", "dog", "horse", "sheep", "cow", "bird", "bear"]
    return {index + 1: f"{colour} {animal}" for index, (colour, animal) in
            enumerate((c, a) for c in colours for a in animals)}


def test_negative_sampling_respects_token_limit_and_is_seeded(tokenizer):
    names = _many_categories()
    count = lambda text: len(tokenizer.tokenize(text))  # noqa: E731

    def draw(seed, image_id=0, positives=(1, 2)):
        import random
        return sample_detection_caption(positives, names, random.Random(f"{seed}:{image_id}"), count, max_text_len=20)

    captions = set()
    for seed in range(30):
        caption, positions, kept = draw(seed)
        assert len(tokenizer(caption)["input_ids"]) <= 20
        assert sorted(kept) == [1, 2]
        parts = caption.split(". ")
        assert len(parts) == len(set(parts)) and {"red cat", "red dog"} <= set(parts)
        assert {caption[s:e] for s, e in positions.values()} == set(parts)
        captions.add(caption)
        assert draw(seed) == (caption, positions, kept)  # same seed, same caption
    assert len(captions) > 10
    # Negatives fill the budget only as far as they fit: at most (18 - 6) / 3 = 3 negatives (strictly positive rest).
    assert max(len(c.split(". ")) for c in captions) <= 2 + 3


def test_positive_overflow_drops_classes_and_their_boxes(tmp_path, tokenizer):
    _write_image(tmp_path / "a.png", 40, 40)
    categories = [{"id": i, "name": n} for i, n in enumerate(["cat", "dog", "car", "bus"], start=1)]
    annotations = [{"id": i, "image_id": 1, "category_id": i, "bbox": [i, i, 10, 10]} for i in range(1, 5)]
    (tmp_path / "d.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 40,
                                                             "height": 40}], "annotations": annotations,
                                                 "categories": categories}))
    # Budget 8 - 2 = 6 tokens: three of "x. " (2 tokens each) fit, the fourth positive class is dropped.
    row = next(coco_detection_examples(tmp_path / "d.json", tmp_path, tokenizer=tokenizer, max_text_len=8, seed=1))
    assert len(row["boxes"]) == 3 and len(set(row["category_ids"])) == 3
    assert len(row["caption"].split(". ")) == 3  # no room left for negatives
    assert len(tokenizer(row["caption"])["input_ids"]) <= 8
    for box, category in zip(row["boxes"], row["category_ids"]):
        assert box == [category, category, category + 9, category + 9]


def test_mdetr_examples(tmp_path):
    _write_image(tmp_path / "f.png", 60, 50)
    caption = "a man in a red shirt throws a ball"
    index = {
        "images": [{"id": 7, "file_name": "f.png", "width": 60, "height": 50, "caption": caption}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [5, 6, 20, 30], "iscrowd": 0,
             "tokens_positive": [[0, 5], [9, 20]]},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [40, 30, 30, 30], "iscrowd": 0,
             "tokens_positive": [[28, 34]]},
        ],
        "categories": [{"id": 1, "name": "object"}],
    }
    (tmp_path / "m.json").write_text(json.dumps(index))
    [row] = list(mdetr_examples(tmp_path / "m.json", tmp_path))
    assert row["caption"] == caption and row["image_id"] == 7
    assert row["boxes"] == [[5, 6, 24, 35], [40, 30, 59, 49]]
    assert [[caption[s:e] for s, e in spans] for spans in row["spans"]] == [["a man", "a red shirt"], ["a ball"]]
    assert row["category_ids"] == [-1, -1]


def test_odvg_examples(tmp_path, tokenizer):
    _write_image(tmp_path / "o.png", 80, 60)
    records = [
        {"filename": "o.png", "height": 60, "width": 80, "detection": {"instances": [
            {"bbox": [10, 10, 30, 40], "label": 0, "category": "dog"},
            {"bbox": [70, 50, 90, 70], "label": 2, "category": "traffic_light"}]}},
        {"filename": "o.png", "height": 60, "width": 80, "detection": {"instances": [
            {"bbox": [1, 2, 11, 12], "label": 1, "category": "cat"}]}},
        {"filename": "o.png", "height": 60, "width": 80, "grounding": {"caption": "a dog and a dog bowl", "regions": [
            {"bbox": [0, 0, 20, 20], "phrase": "dog bowl", "tokens_positive": [[12, 20]]},
            {"bbox": [20, 20, 40, 50], "phrase": "a dog"}]}},
    ]
    path = tmp_path / "o.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    rows = list(odvg_examples(path, tmp_path, tokenizer=tokenizer, num_negatives=5, full_negative_prob=1.0))
    assert [row["image_id"] for row in rows] == [0, 1, 2]
    first = rows[0]
    # Exclusive ends (x + w) become inclusive (x2 - 1), then clamp to [0, 79] x [0, 59].
    assert first["boxes"] == [[10, 10, 29, 39], [70, 50, 79, 59]]
    assert first["category_ids"] == [0, 2]
    assert sorted(first["caption"].split(". ")) == ["cat", "dog", "traffic light"]  # vocabulary from the file
    assert [first["caption"][s:e] for [(s, e)] in first["spans"]] == ["dog", "traffic light"]
    grounding = rows[2]
    assert grounding["caption"] == "a dog and a dog bowl" and grounding["category_ids"] == [-1, -1]
    # A region without tokens_positive is grounded to every occurrence of its phrase.
    assert grounding["spans"] == [[[12, 20]], [[0, 5], [10, 15]]]
    assert grounding["boxes"] == [[0, 0, 19, 19], [20, 20, 39, 49]]
    inclusive = list(odvg_examples(path, tmp_path, tokenizer=tokenizer, exclusive_boxes=False,
                                   label_map={"0": "dog", "1": "cat", "2": "light"}))
    assert inclusive[0]["boxes"] == [[10, 10, 30, 40], [70, 50, 79, 59]]
    assert "light" in inclusive[0]["caption"].split(". ")


def test_build_dataset_and_streaming(coco_files, tokenizer, tmp_path):
    annotation_file, image_dir = coco_files
    kwargs = dict(annotation_file=str(annotation_file), image_dir=str(image_dir), tokenizer=tokenizer, seed=4)
    expected = list(coco_detection_examples(**kwargs))
    dataset = build_grounding_dataset(coco_detection_examples, cache_dir=str(tmp_path / "cache"), **kwargs)
    assert len(dataset) == 3 and dataset.features == GROUNDING_FEATURES
    streamed = build_grounding_dataset(coco_detection_examples, streaming=True, **kwargs)
    for rows in (list(dataset), list(streamed)):
        for row, reference in zip(rows, expected):
            assert isinstance(row["image"], Image.Image)
            for key in ("image_id", "caption", "boxes", "spans", "category_ids"):
                assert row[key] == reference[key]
        assert rows[0]["image"].size == (100, 80)


# ----- transform ---------------------------------------------------------------------------------------------------

def test_transform_resize_then_flip_hand_computed():
    image = Image.new("RGB", (200, 100))
    image.paste((255, 255, 255), (0, 0, 50, 100))  # left quarter white, so the flip shows
    boxes = torch.tensor([[10.0, 20.0, 59.0, 39.0], [0.0, 0.0, 199.0, 99.0]])
    resized, out = GlipTrainTransform(min_sizes=(50,), flip_prob=0.0)(image, boxes)
    assert resized.size == (100, 50)
    assert out.tolist() == [[5.0, 10.0, 29.5, 19.5], [0.0, 0.0, 99.5, 49.5]]
    flipped, out = GlipTrainTransform(min_sizes=(50,), flip_prob=1.0)(image, boxes)
    # BoxList.transpose(FLIP_LEFT_RIGHT) on the resized width 100: x1' = 100 - x2 - 1, x2' = 100 - x1 - 1.
    assert out.tolist() == [[69.5, 10.0, 94.0, 19.5], [-0.5, 0.0, 99.0, 49.5]]
    assert flipped.tobytes() == resized.transpose(Image.FLIP_LEFT_RIGHT).tobytes()
    assert flipped.getpixel((99, 0)) == (255, 255, 255) and flipped.getpixel((0, 0)) == (0, 0, 0)


def test_transform_unequal_ratios_and_max_size():
    image = Image.new("RGB", (333, 100))
    resized, out = GlipTrainTransform(min_sizes=(50,), flip_prob=0.0)(image, [[33.3, 10.0, 332.0, 99.0]])
    assert resized.size == (166, 50)  # int(50 * 333 / 100): the long side is truncated
    torch.testing.assert_close(out[0], torch.tensor([33.3 * 166 / 333, 5.0, 332 * 166 / 333, 49.5]))
    wide = Image.new("RGB", (1000, 100))
    resized, out = GlipTrainTransform(min_sizes=(800,), max_size=1333, flip_prob=0.0)(wide, torch.zeros(0, 4))
    assert resized.size == (1330, 133) and out.shape == (0, 4)  # round(1333 * 100 / 1000) = 133


def test_transform_picks_sizes_from_the_list_and_is_seeded():
    image = Image.new("RGB", (40, 30))
    sizes = {GlipTrainTransform(min_sizes=(10, 20, 30), seed=seed)(image, [])[0].size[1] for seed in range(20)}
    assert sizes == {10, 20, 30}
    first, second = GlipTrainTransform(seed=5), GlipTrainTransform(seed=5)
    for _ in range(5):
        assert torch.equal(first(image, [[1, 2, 3, 4]])[1], second(image, [[1, 2, 3, 4]])[1])


# ----- collator ----------------------------------------------------------------------------------------------------

def _phrase_token_ids(tokenizer, phrase):
    return tokenizer(phrase, add_special_tokens=False)["input_ids"]


def test_collator_eval_labels(processor, tokenizer, tmp_path):
    small = GlipProcessor(GlipImageProcessor(size={"shortest_edge": 40, "longest_edge": 1333}), tokenizer)
    examples = [
        {"image": Image.new("RGB", (100, 80)), "image_id": 5, "caption": "cat. dog. teddy bear",
         "boxes": [[10, 20, 39, 59], [50, 10, 99, 79]], "spans": [[[10, 20]], [[0, 3]]], "category_ids": [7, 1]},
        {"image": Image.new("RGB", (64, 48)), "image_id": 12, "caption": "bus", "boxes": [], "spans": [],
         "category_ids": []},
    ]
    batch = GlipDataCollator(small, train=False)(examples)
    length = batch["input_ids"].shape[1]
    assert length == len(tokenizer("cat. dog. teddy bear")["input_ids"])
    assert batch["pixel_values"].shape == (2, 3, 64, 64) and batch["pixel_mask"].shape == (2, 64, 64)
    assert batch["image_sizes"].tolist() == [[40, 50], [40, 53]]
    assert batch["original_sizes"].tolist() == [[80, 100], [48, 64]]
    assert batch["image_ids"].tolist() == [5, 12]
    first, second = batch["labels"]
    assert first["boxes"].dtype == torch.float32 and first["token_map"].dtype == torch.float32
    assert first["boxes"].tolist() == [[5.0, 10.0, 19.5, 29.5], [25.0, 5.0, 49.5, 39.5]]  # ratio 0.5
    assert first["token_map"].shape == (2, length)
    for row, phrase in zip(first["token_map"], ["teddy bear", "cat"]):
        assert batch["input_ids"][0][row.bool()].tolist() == _phrase_token_ids(tokenizer, phrase)
        assert set(row.unique().tolist()) <= {0.0, 1.0}
    assert second["boxes"].shape == (0, 4) and second["token_map"].shape == (0, length)


def test_collator_train_applies_transform_and_drops_clipped_boxes(processor, tokenizer):
    example = {"image": Image.new("RGB", (100, 80)), "image_id": 1, "caption": "a man with a hat",
               "boxes": [[10, 20, 39, 59], [120, 5, 150, 30], [0, 79, 20, 90]],  # 2nd outside, 3rd flat after clip
               "spans": [[[0, 5]], [[11, 16]], [[13, 16]]], "category_ids": [-1, -1, -1]}
    transform = GlipTrainTransform(min_sizes=(40,), flip_prob=1.0, seed=0)
    batch = GlipDataCollator(processor, transform=transform)([example])
    [labels] = batch["labels"]
    # Resized to 50 x 40 (ratio 0.5), then flipped: x1' = 50 - 19.5 - 1, x2' = 50 - 5 - 1.
    assert labels["boxes"].tolist() == [[29.5, 10.0, 44.0, 29.5]]
    assert batch["input_ids"][0][labels["token_map"][0].bool()].tolist() == _phrase_token_ids(tokenizer, "a man")
    assert batch["image_sizes"].tolist() == [[40, 50]] and batch["pixel_values"].shape[-2:] == (64, 64)


def test_collator_rejects_too_long_captions(tokenizer):
    processor = GlipProcessor(GlipImageProcessor(), tokenizer, max_text_len=8)
    example = {"image": Image.new("RGB", (20, 20)), "image_id": 0, "caption": "one two three four five six seven",
               "boxes": [], "spans": [], "category_ids": []}
    with pytest.raises(ValueError, match="max_text_len=8"):
        GlipDataCollator(processor, train=False)([example])


def test_collator_on_dataset_rows(coco_files, processor, tokenizer, tmp_path):
    annotation_file, image_dir = coco_files
    dataset = build_grounding_dataset(coco_detection_examples, cache_dir=str(tmp_path / "cache"),
                                      annotation_file=str(annotation_file), image_dir=str(image_dir),
                                      tokenizer=tokenizer, seed=0)
    collator = GlipDataCollator(processor, train=False)
    batch = collator([dataset[i] for i in range(3)])
    raw = collator([dataset.cast_column("image", type(GROUNDING_FEATURES["image"])(decode=False))[i]
                    for i in range(3)])
    assert torch.equal(batch["pixel_values"], raw["pixel_values"])
    assert [len(label["boxes"]) for label in batch["labels"]] == [3, 0, 0]
    # 100 x 80 -> 1000 x 800: boxes scale by 10.
    assert batch["labels"][0]["boxes"][0].tolist() == [100.0, 200.0, 390.0, 590.0]
    for row, spans in zip(batch["labels"][0]["token_map"], dataset[0]["spans"]):
        phrase = dataset[0]["caption"][spans[0][0]:spans[0][1]]
        assert batch["input_ids"][0][row.bool()].tolist() == _phrase_token_ids(tokenizer, phrase)


def test_load_example_image_ignores_exif_orientation(tmp_path):
    image = Image.new("RGB", (30, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": datasets' decoder would turn the image; the original's loader does not
    image.save(tmp_path / "r.jpg", exif=exif)
    assert load_example_image(str(tmp_path / "r.jpg")).size == (30, 20)
    assert load_example_image({"path": str(tmp_path / "r.jpg"), "bytes": None}).size == (30, 20)
    loaded = load_example_image(Image.open(tmp_path / "r.jpg"))
    assert loaded.size == (30, 20) and not loaded.info
