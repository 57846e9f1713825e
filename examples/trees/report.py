"""The demo's report: reload the saved model the ways a user would, detect on a held-out photo, plot the curves.

`write_report` returns the summary that `run_demo.py` writes to metrics.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, pipeline

import glip_hf  # noqa: F401  (registers GLIP with the Auto classes and the pipeline)

PROMPT = "tree"
METRICS = ("eval_AP", "eval_AP50", "eval_AP75")


def plot_curves(log_history: list[dict], path: Path, before: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evaluations = [(e["step"], e) for e in log_history if "eval_AP" in e and "step" in e]
    if before is not None:  # the untrained model, evaluated before the first step
        evaluations = [(0, before)] + [(step, e) for step, e in evaluations if step > 0]
    figure, (loss_axis, ap_axis) = plt.subplots(1, 2, figsize=(11, 4))
    loss_axis.plot(*zip(*losses), color="#4363d8")
    loss_axis.set(title="training loss", xlabel="step", ylabel="loss (token focal + 2 GIoU + centerness)")
    for name, colour in zip(METRICS, ("#e6194b", "#3cb44b", "#911eb4")):
        ap_axis.plot([s for s, _ in evaluations], [e[name] for _, e in evaluations], marker="o", color=colour,
                     label=name.removeprefix("eval_"))
    ap_axis.set(title="held-out COCO AP (prompt: \"tree\")", xlabel="step", ylim=(0, 1))
    ap_axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _evaluations(metrics: dict) -> list[tuple[int, dict]]:
    steps = [(0, metrics["before"])] if "before" in metrics else []
    return steps + [(e["step"], e) for e in metrics["log_history"] if "eval_AP" in e and e.get("step", 0) > 0]


def plot_self_training(teacher: dict, student: dict, path: Path) -> None:
    """Held-out AP50 during training and the final AP / AP50 / AP75 of the teacher and the student, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curve_axis, bar_axis) = plt.subplots(1, 2, figsize=(11, 4))
    runs = (("teacher (visible labels)", teacher, "#4363d8"), ("student (+ pseudo-labels)", student, "#e6194b"))
    for name, metrics, colour in runs:
        evaluations = _evaluations(metrics)
        curve_axis.plot([s for s, _ in evaluations], [e["eval_AP50"] for _, e in evaluations], marker="o",
                        color=colour, label=name)
    curve_axis.set(title="held-out AP50 during training", xlabel="step", ylim=(0, 1))
    curve_axis.legend()
    width = 0.38
    for offset, (name, metrics, colour) in zip((-width / 2, width / 2), runs):
        values = [metrics["after"][key] for key in METRICS]
        bars = bar_axis.bar([i + offset for i in range(len(METRICS))], values, width, color=colour, label=name)
        bar_axis.bar_label(bars, fmt="%.3f", fontsize=8)
    bar_axis.set_xticks(range(len(METRICS)), [key.removeprefix("eval_") for key in METRICS])
    bar_axis.set(title="held-out COCO AP after training", ylim=(0, 1))
    bar_axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def draw_prediction(image_path: Path, detections: list[dict], truth: list[list[float]], path: Path) -> None:
    """True boxes in green, predicted ones in red with their score."""
    image = Image.open(image_path).convert("RGB")
    draw = ImageDraw.Draw(image)
    for x, y, w, h in truth:
        draw.rectangle((x, y, x + w - 1, y + h - 1), outline="#3cb44b", width=2)
    for detection in detections:
        x1, y1, x2, y2 = detection["box"]
        draw.rectangle((x1, y1, x2, y2), outline="#e6194b", width=2)
        draw.text((x1 + 2, y1 + 1), f"{detection['score']:.2f}", fill="#e6194b")
    image.save(path)


def heldout_photo(data_dir: Path) -> tuple[Path, list]:
    """The held-out tile with the most trees, and its true boxes (COCO xywh)."""
    coco = json.loads((data_dir / "heldout.json").read_text())
    counts = {}
    for annotation in coco["annotations"]:
        counts.setdefault(annotation["image_id"], []).append(annotation["bbox"])
    image_id = max(counts, key=lambda key: len(counts[key]))
    entry = next(image for image in coco["images"] if image["id"] == image_id)
    return data_dir / "images" / entry["file_name"], counts[image_id]


def check_reload(model_dir: Path, photo: Path, threshold: float) -> dict:
    """Detections through AutoModel + AutoProcessor and through the pipeline; they must agree."""
    model = AutoModelForZeroShotObjectDetection.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    image = Image.open(photo).convert("RGB")
    inputs = processor(images=image, text=[PROMPT])
    with torch.no_grad():
        outputs = model(**inputs)
    result = processor.post_process_grounded_object_detection(outputs, inputs, threshold=threshold)[0]
    detector = pipeline("zero-shot-object-detection", model=str(model_dir))
    found = detector(image, candidate_labels=[PROMPT], threshold=threshold)
    same = len(found) == len(result["scores"]) and all(
        abs(a["score"] - b) < 1e-5 for a, b in zip(found, sorted(result["scores"].tolist(), reverse=True)))
    return {"auto_classes_detections": len(result["scores"]), "pipeline_detections": len(found),
            "pipeline_matches_processor": bool(same)}


def run_cli(model_dir: Path, photo: Path, output: Path, threshold: float, device: str) -> list[dict]:
    command = [sys.executable, "-m", "glip_hf.cli", "detect", "--model", str(model_dir), "--image", str(photo),
               "--prompt", PROMPT, "--threshold", str(threshold), "--output-dir", str(output),
               "--device", device]
    subprocess.run(command, check=True)
    return json.loads((output / f"{photo.stem}.json").read_text())["detections"]


def write_report(model_dir: Path, data_dir: Path, output: Path, metrics: dict, device: str = "cpu",
                 threshold: float = 0.3) -> dict:
    before = {k.removeprefix("eval_"): metrics["before"][k] for k in METRICS}
    after = {k.removeprefix("eval_"): metrics["after"][k] for k in METRICS}
    plot_curves(metrics["log_history"], output / "curves.png", metrics.get("before"))
    photo, truth = heldout_photo(data_dir)
    detections = run_cli(model_dir, photo, output / "detect", threshold, device)
    draw_prediction(photo, detections, truth, output / "heldout_prediction.png")
    return {
        "before": before, "after": after, "heldout_photo": photo.name, "true_trees_in_photo": len(truth),
        "detections_in_photo": len(detections), "reload": check_reload(model_dir, photo, threshold),
        "files": {"curves": "curves.png", "prediction": "heldout_prediction.png",
                  "cli_json": f"detect/{photo.stem}.json"},
    }
