"""Tiny generated benchmark datasets (COCO, LVIS, ODinW, Flickr30k Entities) and a tiny saved model, for the
evaluation tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from conftest import bert_vocab_text_config, tiny_config
from PIL import Image, ImageDraw

from glip_hf import GlipForGrounding, GlipImageProcessor, GlipProcessor
from glip_hf.processing_glip import load_tokenizer

SIZE = 96
COLOURS = [(220, 40, 40), (40, 60, 220), (40, 200, 60), (230, 200, 30)]


def save_tiny_model(folder: Path, max_text_len: int = 48) -> Path:
    """A random tiny GLIP and its processor; no candidate threshold, so that random scores still give boxes."""
    torch.manual_seed(0)
    model = GlipForGrounding(tiny_config(text_config=bert_vocab_text_config(), max_text_len=max_text_len,
                                         anchor_sizes=[32, 64, 128, 256, 512]))
    model.save_pretrained(folder)
    GlipProcessor(GlipImageProcessor(size={"shortest_edge": 128, "longest_edge": 160}), load_tokenizer(),
                  max_text_len=max_text_len, candidate_threshold=0.0).save_pretrained(folder)
    return folder


def draw_images(folder: Path, count: int, seed: int, names=None, categories: int = 2, extension: str = ".png"):
    """Images with coloured shapes; per image the list of (category index, [x, y, w, h]) drawn."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    drawn = []
    for index in range(count):
        height, width = SIZE, int(rng.integers(SIZE - 24, SIZE + 24))
        image = Image.fromarray(rng.integers(90, 160, (height, width, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        shapes = []
        for category in sorted(set(rng.integers(0, categories, 2).tolist())):
            extent = int(rng.integers(SIZE // 5, SIZE // 2.5))
            x, y = int(rng.integers(0, width - extent)), int(rng.integers(0, height - extent))
            draw.rectangle((x, y, x + extent - 1, y + extent - 1), fill=COLOURS[category % len(COLOURS)])
            shapes.append((category, [x, y, extent, extent]))
        name = names[index] if names else f"{index + 1}{extension}"
        image.save(folder / name)
        drawn.append((name, width, height, shapes))
    return drawn


def write_coco(folder: Path, count: int = 5, seed: int = 0, category_names=("red square", "blue square"),
               annotation_name: str = "annotations.json") -> Path:
    drawn = draw_images(folder, count, seed, categories=len(category_names))
    images, annotations = [], []
    for image_id, (name, width, height, shapes) in enumerate(drawn, start=1):
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for category, box in shapes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category + 1,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    categories = [{"id": index + 1, "name": name} for index, name in enumerate(category_names)]
    path = folder / annotation_name
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def write_lvis(folder: Path, count: int = 4, seed: int = 1, num_categories: int = 45) -> Path:
    """An LVIS-format file (v1 style: images by coco_url, negatives, not-exhaustive lists, frequencies) with more
    class names than one 40-name chunk."""
    (folder / "val2017").mkdir(parents=True, exist_ok=True)
    drawn = draw_images(folder / "val2017", count, seed, names=[f"{i:012d}.jpg" for i in range(1, count + 1)],
                        categories=3)
    words = ["red", "blue", "green", "yellow", "box", "plate", "cup", "kite", "boat", "tree"]
    names = [f"{words[i % 10]}_{words[(i // 10) % 10]}" if i >= 3 else words[i] for i in range(num_categories)]
    categories = [{"id": i + 1, "name": name, "frequency": "rcf"[i % 3]} for i, name in enumerate(names)]
    images, annotations = [], []
    for image_id, (name, width, height, shapes) in enumerate(drawn, start=1):
        present = {category + 1 for category, _ in shapes}
        images.append({"id": image_id, "coco_url": f"http://images.cocodataset.org/val2017/{name}",
                       "width": width, "height": height,
                       "neg_category_ids": [c for c in range(4, num_categories + 1, 3) if c not in present],
                       "not_exhaustive_category_ids": sorted(present)[:1] if image_id % 2 else []})
        for category, box in shapes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category + 1,
                                "bbox": box, "area": float(box[2] * box[3])})
    path = folder / "lvis_v1_minival.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def write_odinw(root: Path, datasets: list) -> Path:
    """ODinW folders at the paths of the original's configs for the given dataset specs."""
    for seed, spec in enumerate(datasets):
        names = [category["name"] for category in spec.categories]
        annotations = root / spec.test["annotations"]
        images = root / spec.test["images"]
        path = write_coco(images, count=2, seed=seed, category_names=names, annotation_name=annotations.name)
        if path != annotations:
            annotations.parent.mkdir(parents=True, exist_ok=True)
            path.rename(annotations)
    return root


FLICKR_SENTENCES = {
    "1001": ["[/EN#1/people A red square] next to [/EN#2/other a blue square] .",
             "[/EN#2/other The blue one] is small .",
             "Nothing here has a box [/EN#9/scene at all] ."],
    "1002": ["[/EN#3/other A red square] and [/EN#4/other/clothing two blue squares] ."],
}


def write_flickr(root: Path, images_dir: Path) -> Path:
    """Flickr30k Entities files for two images: entity 4 has two boxes (ANY- and MERGED-box differ), entity 9 is a
    scene without a box; plus the split lists."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "Sentences").mkdir(parents=True, exist_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    boxes = {"1001": {"1": [[5, 5, 40, 40]], "2": [[50, 20, 80, 60]]},
             "1002": {"3": [[10, 10, 30, 50]], "4": [[40, 10, 60, 30], [60, 50, 90, 90]]}}
    for seed, (image_id, entities) in enumerate(boxes.items()):
        objects = "".join(
            f"<object><name>{entity}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
            f"<ymax>{b[3]}</ymax></bndbox></object>" for entity, entity_boxes in entities.items() for b in entity_boxes)
        objects += "<object><name>9</name><nobndbox>0</nobndbox><scene>1</scene></object>"
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><size><width>{SIZE}</width><height>{SIZE}</height>"
            f"<depth>3</depth></size>{objects}</annotation>")
        (root / "Sentences" / f"{image_id}.txt").write_text("\n".join(FLICKR_SENTENCES[image_id]) + "\n")
        draw_images(images_dir, 1, seed, names=[f"{image_id}.jpg"])
    (root / "test.txt").write_text("1001\n1002\n")
    (root / "val.txt").write_text("1002\n")
    return root
