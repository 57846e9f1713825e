"""examples/trees/build_dataset.py: tiles of deepforest's annotated aerial photos as COCO "tree" detection data.

Needs the deepforest wheel's data folder (`pip install --no-deps deepforest==2.1.0`); skipped without it, failed
under CI=true.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from xml.etree import ElementTree

import numpy as np
import pytest
from conftest import REPO_ROOT
from PIL import Image

sys.path.insert(0, str(REPO_ROOT / "examples"))
from trees import build_dataset  # noqa: E402

SOURCE_BOXES = {"OSBS_029": 61, "SOAP_061": 37, "2019_YELL_2_528000_4978000_image_crop2": 574,
                "2019_YELL_2_541000_4977000_image_crop": 279}


@pytest.fixture(scope="module")
def data_dir():
    try:
        return build_dataset.deepforest_data_dir()
    except FileNotFoundError as error:
        message = f"deepforest's example data is not installed ({error})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def full(data_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("trees_full")
    return output, build_dataset.build_tree_dataset(output, data_dir=data_dir)


@pytest.fixture(scope="module")
def small(data_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("trees_small")
    return output, build_dataset.build_tree_dataset(output, small=True, data_dir=data_dir)


def load(output, split):
    return json.loads((output / f"{split}.json").read_text())


def overlaps(a, b):
    (ax, ay, aw, ah), (bx, by, bw, bh) = a, b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


def test_full_build_accounts_for_every_box(full):
    output, stats = full
    assert stats["source_boxes"] == sum(SOURCE_BOXES.values()) == 951
    assert {name: info["boxes"] for name, info in stats["sources"].items()} == SOURCE_BOXES
    for info in stats["sources"].values():
        assert info["kept"] + info["dropped_partial"] + info["dropped_outside"] == info["boxes"]
        assert info["annotations"] == info["kept"] + info["kept_twice"]
    written = {split: len(load(output, split)["annotations"]) for split in ("train", "heldout")}
    assert written == {split: info["boxes"] for split, info in stats["splits"].items()}
    assert sum(written.values()) == 951 - stats["dropped_boxes"] + stats["kept_twice"]
    assert stats["unselected_annotations"] == 0
    assert 0 < stats["dropped_boxes"] < 0.05 * 951
    # 400-pixel grids: 6 x 6 (last column 299 wide, a 72-pixel bottom strip dropped) and 3 x 3 (a 49-pixel right strip
    # dropped), 2 + 1 columns held out, plus the two 400 x 400 images.
    assert {split: info["tiles"] for split, info in stats["splits"].items()} == {"train": 31, "heldout": 16}
    assert len(list((output / "images").glob("*.png"))) == 47


@pytest.mark.parametrize("build", ["full", "small"])
def test_train_and_heldout_windows_never_overlap(build, request):
    output, stats = request.getfixturevalue(build)
    by_source = {}
    for tile in stats["tiles"]:
        by_source.setdefault(tile["source"], []).append(tile)
        x, y, width, height = tile["window_xywh"]
        source = stats["sources"][tile["source"]]
        assert 0 <= x and 0 <= y and x + width <= source["width"] and y + height <= source["height"]
    for tiles in by_source.values():
        for a, b in itertools.combinations(tiles, 2):
            assert not overlaps(a["window_xywh"], b["window_xywh"]), (a, b)
    splits = {name: {tile["split"] for tile in tiles} for name, tiles in by_source.items()}
    assert splits.get("OSBS_029", {"train"}) == {"train"} and splits.get("SOAP_061", {"heldout"}) == {"heldout"}
    # Held-out tiles of a large image are its right-most columns: every held-out window lies right of every train one.
    for name, tiles in by_source.items():
        train = [t["window_xywh"] for t in tiles if t["split"] == "train"]
        heldout = [t["window_xywh"] for t in tiles if t["split"] == "heldout"]
        if train and heldout:
            assert max(x + w for x, _, w, _ in train) <= min(x for x, _, _, _ in heldout), name
    # stats and the JSONs describe the same tiles
    for split in ("train", "heldout"):
        images = {image["file_name"]: image for image in load(output, split)["images"]}
        records = {t["file_name"]: t for t in stats["tiles"] if t["split"] == split}
        assert set(images) == set(records)
        for name, record in records.items():
            assert images[name]["id"] == record["image_id"]
            assert [images[name]["width"], images[name]["height"]] == record["window_xywh"][2:]


@pytest.mark.parametrize("build", ["full", "small"])
def test_boxes_lie_inside_their_tiles(build, request):
    output, _ = request.getfixturevalue(build)
    for split in ("train", "heldout"):
        index = load(output, split)
        images = {image["id"]: image for image in index["images"]}
        assert index["categories"] == [{"id": 1, "name": "tree"}]
        for annotation in index["annotations"]:
            x, y, width, height = annotation["bbox"]
            image = images[annotation["image_id"]]
            assert width >= 1 and height >= 1 and x >= 0 and y >= 0
            assert x + width <= image["width"] and y + height <= image["height"]  # inclusive x2 = x + w - 1 < W
            assert annotation["area"] == width * height
            assert annotation["iscrowd"] == 0 and annotation["category_id"] == 1


def test_boxes_and_pixels_match_the_source(full, data_dir):
    output, stats = full
    # OSBS_029 is one whole tile: its boxes are the VOC boxes, 1-based inclusive -> 0-based, w = xmax - xmin + 1.
    root = ElementTree.parse(data_dir / "OSBS_029.xml").getroot()
    expected = sorted([int(o.findtext("bndbox/xmin")) - 1, int(o.findtext("bndbox/ymin")) - 1,
                       int(o.findtext("bndbox/xmax")) - int(o.findtext("bndbox/xmin")) + 1,
                       int(o.findtext("bndbox/ymax")) - int(o.findtext("bndbox/ymin")) + 1]
                      for o in root.iter("object"))
    train = load(output, "train")
    osbs = next(image["id"] for image in train["images"] if image["file_name"].startswith("OSBS_029"))
    assert sorted(a["bbox"] for a in train["annotations"] if a["image_id"] == osbs) == expected
    # A tile's pixels are its window of the source image.
    tile = next(t for t in stats["tiles"] if t["source"].endswith("image_crop") and t["split"] == "heldout")
    x, y, width, height = tile["window_xywh"]
    with Image.open(data_dir / f"{tile['source']}.png") as source:
        window = np.asarray(source.convert("RGB").crop((x, y, x + width, y + height)))
    assert np.array_equal(np.asarray(Image.open(output / "images" / tile["file_name"]).convert("RGB")), window)


@pytest.mark.parametrize("build", ["full", "small"])
def test_jsons_load_with_pycocotools(build, request):
    from pycocotools.coco import COCO

    output, _ = request.getfixturevalue(build)
    for split in ("train", "heldout"):
        coco = COCO(str(output / f"{split}.json"))
        annotation_ids, image_ids = sorted(coco.getAnnIds()), sorted(coco.getImgIds())
        assert annotation_ids == list(range(1, len(annotation_ids) + 1))  # id 0 would never match in COCOeval
        assert image_ids == list(range(1, len(image_ids) + 1))
        assert coco.getCatIds() == [1]
        for image in coco.loadImgs(image_ids):
            with Image.open(output / "images" / image["file_name"]) as tile:
                assert tile.size == (image["width"], image["height"]) and tile.mode == "RGB"


def test_coco_detection_examples_reads_the_train_json(small):
    from glip_hf.data_glip import coco_detection_examples

    output, stats = small
    for split, fixed_prompt in (("train", False), ("heldout", True)):
        rows = list(coco_detection_examples(output / f"{split}.json", output / "images", fixed_prompt=fixed_prompt))
        assert len(rows) == stats["splits"][split]["tiles"]
        assert sum(len(row["boxes"]) for row in rows) == stats["splits"][split]["boxes"]
        for row in rows:
            assert "tree" in row["caption"]
            assert all(row["caption"][s:e] == "tree" for spans in row["spans"] for s, e in spans)
            assert set(row["category_ids"]) <= {1}


def test_small_variant_is_small_and_deterministic(small, data_dir, tmp_path, capsys):
    output, stats = small
    assert stats["settings"]["tile_size"] == 256
    assert {split: info["tiles"] for split, info in stats["splits"].items()} == {"train": 4, "heldout": 2}
    assert all(tile["window_xywh"][2:] == [256, 256] and tile["boxes"] >= 3 for tile in stats["tiles"])
    assert 0 < stats["splits"]["heldout"]["boxes"] and sum(info["boxes"] for info in stats["splits"].values()) < 150
    assert len(list((output / "images").glob("*.png"))) == 6
    # the CLI, same seed: the same files
    again = build_dataset.main(["--output-dir", str(tmp_path), "--small", "--data-dir", str(data_dir)])
    assert "train" in capsys.readouterr().out
    assert again["tiles"] == stats["tiles"]
    for split in ("train", "heldout"):
        assert (tmp_path / f"{split}.json").read_bytes() == (output / f"{split}.json").read_bytes()


def test_missing_data_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="deepforest"):
        build_dataset.build_tree_dataset(tmp_path / "out", data_dir=tmp_path)
