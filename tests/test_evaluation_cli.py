"""`glip-hf evaluate` end to end on a tiny saved model and tiny generated COCO, LVIS, ODinW and Flickr30k data;
`glip-hf score` on the predictions it saved; two processes give what one gives; bad input errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO_ROOT, free_port
from evaluation_data import save_tiny_model, write_coco, write_flickr, write_lvis, write_odinw

from glip_hf import GlipForGrounding, GlipProcessor, cli
from glip_hf.evaluation.benchmarks import evaluate_detection
from glip_hf.evaluation.odinw import detection_prompt, odinw_suite

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    suite = {dataset.name: dataset for dataset in odinw_suite("odinw_13")}
    return {
        "root": root,
        "model": save_tiny_model(root / "model"),
        "coco": write_coco(root / "coco", 3),
        "lvis": write_lvis(root / "lvis"),
        "odinw": write_odinw(root / "odinw", [suite["pothole"], suite["Raccoon_Raccoon.v2-raw.coco"]]),
        "flickr": write_flickr(root / "flickr", root / "flickr_images"),
    }


def run_cli(*argv):
    return cli.main([str(value) for value in argv])


def evaluate_and_rescore(workspace, tmp_path, capsys, benchmark, score_benchmark, *extra):
    metrics_file, predictions_file = tmp_path / "metrics.json", tmp_path / "predictions.json"
    assert run_cli("evaluate", "--model", workspace["model"], "--benchmark", benchmark, *extra,
                   "--output", metrics_file, "--save-predictions", predictions_file) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads(metrics_file.read_text())
    assert printed == metrics
    return metrics, json.loads(predictions_file.read_text()), predictions_file


def test_evaluate_coco_then_score_gives_the_same_metrics(workspace, tmp_path, capsys):
    coco = workspace["coco"]
    metrics, predictions, predictions_file = evaluate_and_rescore(
        workspace, tmp_path, capsys, "coco", "coco", "--annotations", coco, "--images", coco.parent,
        "--batch-size", "3")
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert predictions and metrics["AP50"] > 0
    sizes = {image["id"]: (image["width"], image["height"]) for image in json.loads(coco.read_text())["images"]}
    for image_id in sizes:
        assert sum(entry["image_id"] == image_id for entry in predictions) <= 100
    for entry in predictions:
        x, y, width, height = entry["bbox"]
        assert 0 <= x and 0 <= y and width >= 1 and height >= 1
        assert x + width <= sizes[entry["image_id"]][0] + 1 and y + height <= sizes[entry["image_id"]][1] + 1
    assert run_cli("score", "--benchmark", "coco", "--ground-truth", coco, "--predictions", predictions_file) == 0
    assert json.loads(capsys.readouterr().out) == metrics


def test_evaluate_lvis_chunks_of_40_names_share_one_vision_pass(workspace, tmp_path, capsys):
    lvis = workspace["lvis"]
    model = GlipForGrounding.from_pretrained(workspace["model"]).eval()
    processor = GlipProcessor.from_pretrained(workspace["model"])
    vision_passes = []
    model.model.vision_backbone.register_forward_hook(lambda *args: vision_passes.append(1))
    metrics, predictions = evaluate_detection(model, processor, lvis, lvis.parent, "lvis", batch_size=2)
    assert len(vision_passes) == 2  # 4 images in batches of 2, every chunk of 45 names in the same pass
    categories = {entry["category_id"] for entry in predictions}
    assert min(categories) <= 40 < max(categories)  # both chunks produced detections
    assert processor.detections_per_image == 300
    per_chunk = Counter((entry["image_id"], entry["category_id"] > 40) for entry in predictions)
    assert max(per_chunk.values()) <= 300  # the original's cut, per chunk
    assert max(sum(n for (image, _), n in per_chunk.items() if image == i) for i in range(1, 5)) > 300
    assert {"APr", "APc", "APf"} <= set(metrics) and set(metrics["standard"]) == set(metrics) - {"standard"}
    predictions_file = tmp_path / "lvis_predictions.json"
    predictions_file.write_text(json.dumps(predictions))
    for benchmark, expected in (("lvis-fixed", {k: v for k, v in metrics.items() if k != "standard"}),
                                ("lvis", metrics["standard"])):
        assert run_cli("score", "--benchmark", benchmark, "--ground-truth", lvis, "--predictions",
                       predictions_file) == 0
        assert json.loads(capsys.readouterr().out) == expected


def test_evaluate_odinw_averages_the_datasets_found_and_reports_the_missing(workspace, tmp_path, capsys):
    metrics, predictions, _ = evaluate_and_rescore(workspace, tmp_path, capsys, "odinw", None, "--annotations",
                                                   workspace["odinw"])
    assert set(predictions) == set(metrics["datasets"]) and all(predictions.values())
    assert set(metrics["datasets"]) == {"pothole", "Raccoon_Raccoon.v2-raw.coco"}
    assert len(metrics["missing"]) == 11 and metrics["evaluated"] == 2
    assert metrics["AP"] == pytest.approx(sum(m["AP"] for m in metrics["datasets"].values()) / 2)
    # ODinW-35's configs carry caption prompts; the phrase is the name only, as the original's
    pothole, aquarium = (next(d for d in odinw_suite("odinw_35") if d.name == name)
                         for name in ("pothole", "Aquarium_Aquarium_Combined.v2-raw-1024.coco"))
    caption, spans, ids = detection_prompt(pothole, {"categories": []})
    assert caption == "there are some holes on the road" and [caption[s:e] for s, e in spans] == ["holes"]
    assert ids == [1]
    caption, spans, ids = detection_prompt(aquarium, {"categories": []})
    assert caption.startswith(" fish. jellyfish. penguin , which is black and white. puffin with orange beaks . ")
    assert [caption[s:e] for s, e in spans][-1] == "stingray" and ids == list(range(1, 8))


def test_evaluate_flickr30k_grounds_each_sentence(workspace, tmp_path, capsys):
    metrics, predictions, predictions_file = evaluate_and_rescore(
        workspace, tmp_path, capsys, "flickr30k", None, "--annotations", workspace["flickr"], "--images",
        workspace["root"] / "flickr_images")
    assert set(metrics) == {"R@1", "R@5", "R@10", "UB"}
    assert metrics["R@1"] <= metrics["R@5"] <= metrics["R@10"] <= metrics["UB"]
    # sentence 2 of image 1001 has no phrase with a box: it is not evaluated
    assert sorted((p["image_id"], p["sentence_id"], len(p["boxes"])) for p in predictions) == [
        ("1001", 0, 2), ("1001", 1, 1), ("1002", 0, 2)]
    assert all(len(boxes) <= 100 for p in predictions for boxes in p["boxes"])
    for protocol in ("any", "merged"):
        assert run_cli("score", "--benchmark", "flickr30k", "--ground-truth", workspace["flickr"],
                       "--predictions", predictions_file, "--flickr-protocol", protocol) == 0
        scored = json.loads(capsys.readouterr().out)
        if protocol == "any":
            assert scored == metrics


@pytest.mark.slow
def test_two_processes_give_the_same_predictions_as_one(workspace, tmp_path, capsys):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate is not installed next to this Python"
    lvis = workspace["lvis"]
    common = ["evaluate", "--model", workspace["model"], "--benchmark", "lvis", "--annotations", lvis,
              "--images", lvis.parent, "--batch-size", "1"]
    assert run_cli(*common, "--save-predictions", tmp_path / "one.json", "--output", tmp_path / "one_metrics.json") == 0
    # accelerate's multi-process launcher is `--multi_gpu`; without a GPU the processes form a gloo group.
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "glip_hf.cli",
               *map(str, common), "--save-predictions", str(tmp_path / "two.json"),
               "--output", str(tmp_path / "two_metrics.json")]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "lvis: 100%" in result.stderr and "2/2" in result.stderr  # the first process ran half of the images
    one, two = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    # Same detections in the same order; float32 sums in processes with fewer threads round differently.
    assert one and [(d["image_id"], d["category_id"]) for d in one] == [(d["image_id"], d["category_id"]) for d in two]
    for first, second in zip(one, two):
        assert first["score"] == pytest.approx(second["score"], abs=1e-5)
        assert first["bbox"] == pytest.approx(second["bbox"], abs=1e-3)
    assert json.loads((tmp_path / "one_metrics.json").read_text()) == json.loads(
        (tmp_path / "two_metrics.json").read_text())


def error_of(capsys, *argv):
    assert run_cli(*argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_bad_input_errors_name_the_file_and_the_field(workspace, tmp_path, capsys):
    coco = workspace["coco"]
    good = [{"image_id": 1, "category_id": 1, "bbox": [1.0, 2.0, 10.0, 12.0], "score": 0.5}]
    missing = tmp_path / "nowhere.json"
    message = error_of(capsys, "score", "--benchmark", "coco", "--ground-truth", coco, "--predictions", missing)
    assert str(missing) in message and "does not exist" in message
    malformed = tmp_path / "malformed.json"
    malformed.write_text('[{"image_id": 1,')
    message = error_of(capsys, "score", "--benchmark", "coco", "--ground-truth", coco, "--predictions", malformed)
    assert str(malformed) in message and "not valid JSON" in message
    for entry, words in (({"category_id": 99}, ("'category_id' 99", "absent from the ground truth")),
                         ({"bbox": [1.0, 2.0, -3.0, 4.0]}, ("'bbox'", "negative width")),
                         ({"image_id": 12345}, ("'image_id' 12345",))):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(good + [{**good[0], **entry}]))
        message = error_of(capsys, "score", "--benchmark", "coco", "--ground-truth", coco, "--predictions", path)
        assert str(path) in message and "entry 1" in message and all(word in message for word in words)
    not_lvis = error_of(capsys, "score", "--benchmark", "lvis", "--ground-truth", coco, "--predictions", path)
    assert str(coco) in not_lvis and "neg_category_ids" in not_lvis
    bad_truth = tmp_path / "truth.json"
    truth = json.loads(coco.read_text())
    truth["annotations"][0]["bbox"][2] = -1
    bad_truth.write_text(json.dumps(truth))
    message = error_of(capsys, "score", "--benchmark", "coco", "--ground-truth", bad_truth, "--predictions", path)
    assert str(bad_truth) in message and "annotations[0]" in message and "negative width" in message
    message = error_of(capsys, "evaluate", "--model", tmp_path, "--benchmark", "coco", "--annotations", coco,
                       "--images", coco.parent)
    assert "no config.json" in message
    for device, words in (("gpu0", "not a torch device"), ("cuda", "CUDA is not available")):
        if device == "cuda" and __import__("torch").cuda.is_available():
            continue
        message = error_of(capsys, "evaluate", "--model", workspace["model"], "--benchmark", "coco",
                           "--annotations", coco, "--images", coco.parent, "--device", device)
        assert words in message


def test_existing_output_is_not_overwritten(workspace, tmp_path, capsys):
    coco = workspace["coco"]
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 12], "score": 0.5}]))
    output = tmp_path / "metrics.json"
    output.write_text("keep me")
    message = error_of(capsys, "score", "--benchmark", "coco", "--ground-truth", coco, "--predictions",
                       predictions, "--output", output)
    assert str(output) in message and "already exists" in message
    assert output.read_text() == "keep me"
