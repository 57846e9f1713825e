"""The demo's self-training step, as in the GLIP paper: a teacher's boxes on unlabelled images train a student.

1. `hold_back_labels`: the labels of every other training tile (by image id) are hidden; those tiles go into a folder
   of their own;
2. the teacher (fine-tuned on the visible tiles only) labels that folder with `glip-hf label`;
3. `student_training_file`: the visible tiles' true boxes and the teacher's pseudo-labels, as one ODVG jsonl, train
   the student (from the same initial model, for the same number of steps as the teacher).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


def hold_back_labels(data_dir: Path) -> dict:
    """Write `visible.json` (COCO, the tiles whose labels stay) and `heldback_images/` (the other tiles' images)."""
    coco = json.loads((data_dir / "train.json").read_text())
    images = sorted(coco["images"], key=lambda image: image["id"])
    hidden = {image["id"] for image in images[1::2]}
    visible = dict(coco, images=[image for image in images if image["id"] not in hidden],
                   annotations=[a for a in coco["annotations"] if a["image_id"] not in hidden])
    (data_dir / "visible.json").write_text(json.dumps(visible))
    folder = data_dir / "heldback_images"
    folder.mkdir(exist_ok=True)
    for image in images:
        if image["id"] in hidden:
            shutil.copy2(data_dir / "images" / image["file_name"], folder / image["file_name"])
    hidden_boxes = sum(1 for a in coco["annotations"] if a["image_id"] in hidden)
    return {"visible_tiles": len(visible["images"]), "visible_trees": len(visible["annotations"]),
            "heldback_tiles": len(hidden), "heldback_trees_hidden": hidden_boxes}


def label_with_teacher(teacher_dir: Path, images: Path, output: Path, threshold: float, device: str) -> dict:
    """`glip-hf label` on the held-back tiles; returns its summary.json."""
    command = [sys.executable, "-m", "glip_hf.cli", "label", "--model", str(teacher_dir), "--images", str(images),
               "--classes", "tree", "--output", str(output), "--threshold", str(threshold), "--batch-size", "4",
               "--device", device]
    subprocess.run(command, check=True)
    return json.loads((output / "summary.json").read_text())


def student_training_file(data_dir: Path, pseudo_labels: Path, heldback_images: Path, path: Path) -> int:
    """One ODVG jsonl of the visible tiles' true boxes and the pseudo-labelled tiles (absolute image paths, so one
    `--train_images` serves both folders); returns the number of pseudo boxes."""
    coco = json.loads((data_dir / "visible.json").read_text())
    names = {category["id"]: category["name"] for category in coco["categories"]}
    labels = {category_id: index for index, category_id in enumerate(sorted(names))}
    by_image = {}
    for annotation in coco["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    lines, pseudo_boxes = [], 0
    for image in coco["images"]:
        instances = [{"bbox": [x, y, x + w, y + h], "label": labels[a["category_id"]],
                      "category": names[a["category_id"]]}
                     for a in by_image.get(image["id"], []) for x, y, w, h in [a["bbox"]]]
        lines.append({"filename": str((data_dir / "images" / image["file_name"]).resolve()),
                      "height": image["height"], "width": image["width"], "detection": {"instances": instances}})
    for line in pseudo_labels.read_text().splitlines():
        record = json.loads(line)
        record["filename"] = str((heldback_images / record["filename"]).resolve())
        pseudo_boxes += len(record["detection"]["instances"])
        lines.append(record)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return pseudo_boxes
