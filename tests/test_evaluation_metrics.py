"""The metrics on synthetic data with known answers: Flickr30k recall (MDETR's protocol: ANY-box and MERGED-box,
R@k and upper bound) on hand-made Entities files, ODinW's few-shot rule, and the shipped `evaluate` modules
against pycocotools and the LVIS evaluator."""

from __future__ import annotations

import contextlib
import io
import json
import random

import numpy as np
import pytest
from evaluation_data import write_flickr
from test_evaluation_lvis import synthetic_lvis

from glip_hf.evaluation import load_metric, metric_path
from glip_hf.evaluation.flickr_eval import flickr_recall, load_flickr_split, parse_sentence, read_boxes
from glip_hf.evaluation.lvis_eval import lvis_evaluate
from glip_hf.evaluation.odinw import FEW_SHOT_SEEDS, odinw_suite, sample_few_shot, write_few_shot_splits

MISS = [0, 0, 2, 2]


@pytest.fixture
def flickr(tmp_path):
    return write_flickr(tmp_path / "flickr", tmp_path / "images")


def hand_made_predictions():
    """Ranked boxes per phrase, built so that each phrase is first recalled at a known rank."""
    return [
        # image 1001 sentence 0: entity 1 at rank 1, entity 2 at rank 3
        {"image_id": "1001", "sentence_id": 0, "boxes": [[[5, 5, 40, 40]], [MISS, MISS, [50, 20, 80, 60]]]},
        # sentence 1: entity 2 only at rank 12 (upper bound only)
        {"image_id": "1001", "sentence_id": 1, "boxes": [[MISS] * 11 + [[51, 21, 80, 60]]]},
        # sentence 2 has no phrase with a box: not evaluated, its entry ignored
        {"image_id": "1001", "sentence_id": 2, "boxes": [[MISS]]},
        # image 1002: entity 3 gets no box; entity 4 (two boxes): rank 1 is one of them (IoU 0.4 with their union),
        # rank 6 is the union
        {"image_id": "1002", "sentence_id": 0, "boxes": [[], [[60, 50, 90, 90], MISS, MISS, MISS, MISS,
                                                               [40, 10, 90, 90]]]},
    ]


def test_sentences_and_annotations_are_read_as_the_entities_release_defines_them(flickr):
    sentence = parse_sentence("[/EN#4/other/clothing Two  blue squares] sit  on [/EN#9/scene the table] .")
    assert sentence.text == "Two blue squares sit on the table ."
    assert [(p.entity_id, p.types, sentence.text[p.start:p.end]) for p in sentence.phrases] == [
        ("4", ["other", "clothing"], "Two blue squares"), ("9", ["scene"], "the table")]
    boxes = read_boxes(flickr / "Annotations" / "1002.xml")
    assert boxes == {"3": [[10, 10, 30, 50]], "4": [[40, 10, 60, 30], [60, 50, 90, 90]]}  # entity 9: no box
    samples = load_flickr_split(flickr, "test", "merged")
    assert [(s.image_id, s.sentence_id, [p.entity_id for p in s.phrases]) for s in samples] == [
        ("1001", 0, ["1", "2"]), ("1001", 1, ["2"]), ("1002", 0, ["3", "4"])]
    assert samples[-1].boxes[1] == [[40, 10, 90, 90]]
    assert [s.image_id for s in load_flickr_split(flickr, "val")] == ["1002"]


@pytest.mark.parametrize(("protocol", "expected"), [
    ("any", {"R@1": 2 / 5, "R@5": 3 / 5, "R@10": 3 / 5, "UB": 4 / 5}),
    ("merged", {"R@1": 1 / 5, "R@5": 2 / 5, "R@10": 3 / 5, "UB": 4 / 5}),
])
def test_flickr_recall_follows_the_any_and_merged_box_protocols(flickr, protocol, expected):
    samples = load_flickr_split(flickr, "test", protocol)
    assert flickr_recall(samples, hand_made_predictions()) == pytest.approx(expected)


def test_flickr_recall_rejects_missing_and_misshaped_predictions(flickr):
    samples = load_flickr_split(flickr, "test")
    with pytest.raises(ValueError, match="no entry for image 1002 sentence 0"):
        flickr_recall(samples, hand_made_predictions()[:3], source="p.json")
    wrong = hand_made_predictions()
    wrong[0]["boxes"] = wrong[0]["boxes"][:1]
    with pytest.raises(ValueError, match="p.json: entry 0 has 1 box lists.*2 phrases"):
        flickr_recall(samples, wrong, source="p.json")
    (flickr / "Annotations" / "1001.xml").write_text("<annotation><object>")
    with pytest.raises(ValueError, match="1001.xml is not valid XML"):
        load_flickr_split(flickr, "test")


def few_shot_ground_truth():
    def annotation(index, image_id, category, side=20):
        return {"id": index, "image_id": image_id, "category_id": category, "bbox": [0, 0, side, side]}

    contents = {1: [1], 2: [1, 2], 3: [2], 4: [3], 5: [3], 6: [1, 3], 7: [2], 8: [1, 2, 3]}
    annotations = [annotation(len(contents) * 10 + image_id * 3 + k, image_id, category, 1 if image_id == 4 else 20)
                   for image_id, categories in contents.items() for k, category in enumerate(categories)]
    return {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in contents], "annotations": annotations,
            "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}


def test_few_shot_sampling_is_the_original_greedy_rule():
    truth = few_shot_ground_truth()
    # seed 0 keeps the sorted order; image 4 has only a 1-pixel box and is never taken
    assert [image["id"] for image in sample_few_shot(truth, 1, 0)["images"]] == [1, 2, 5]
    assert [image["id"] for image in sample_few_shot(truth, 2, 0)["images"]] == [1, 2, 3, 5, 6]
    for seed in FEW_SHOT_SEEDS:
        subset = sample_few_shot(truth, 2, seed)
        order = [1, 2, 3, 5, 6, 7, 8]
        random.Random(seed).shuffle(order)
        needed, expected = {1: 2, 2: 2, 3: 2}, []
        for image_id in order:  # each image taken exactly when one of its categories still needs examples
            categories = {a["category_id"] for a in truth["annotations"] if a["image_id"] == image_id}
            if any(needed[c] > 0 for c in categories):
                expected.append(image_id)
                for c in categories:
                    needed[c] -= 1
        assert {image["id"] for image in subset["images"]} == set(expected)
        assert {a["image_id"] for a in subset["annotations"]} == set(expected)
        assert subset["categories"] == truth["categories"]
    assert FEW_SHOT_SEEDS == (3, 30, 300)


def test_few_shot_files_are_named_as_the_original_and_never_overwritten(tmp_path):
    source = tmp_path / "train.json"
    source.write_text(json.dumps(few_shot_ground_truth()))
    written = write_few_shot_splits(source, tmp_path / "splits", shots=(1, 3), seeds=(3, 30))
    assert [path.name for path in written] == ["fewshot_train_shot1_seed3.json", "fewshot_train_shot1_seed30.json",
                                               "fewshot_train_shot3_seed3.json", "fewshot_train_shot3_seed30.json"]
    assert json.loads(written[0].read_text()) == sample_few_shot(few_shot_ground_truth(), 1, 3)
    with pytest.raises(ValueError, match="fewshot_train_shot1_seed3.json already exists"):
        write_few_shot_splits(source, tmp_path / "splits", shots=(1,), seeds=(3,))


def test_odinw_suites_hold_the_original_configs():
    thirteen, thirty_five = odinw_suite("odinw_13"), odinw_suite("odinw_35")
    assert len(thirteen) == 13 and len(thirty_five) == 35
    assert all(dataset.categories for dataset in thirteen + thirty_five)
    egohands = next(d for d in thirteen if d.name == "EgoHands_generic")
    assert egohands.test["annotations"] == "EgoHands/generic/mini_val/annotations_without_background.json"
    assert sum(bool(d.caption_prompt) for d in thirty_five) == 4 and not any(d.caption_prompt for d in thirteen)
    with pytest.raises(ValueError, match="odinw_13"):
        odinw_suite("odinw_14")


def coco_ground_truth_and_detections(seed=0):
    gt, detections = synthetic_lvis(seed, crowded_image_detections=0)
    for annotation in gt["annotations"]:
        annotation["iscrowd"] = 0
    return gt, detections


def per_image(detections, gt):
    predictions, references = [], []
    for image in gt["images"]:
        mine = [d for d in detections if d["image_id"] == image["id"]]
        predictions.append({"boxes": [d["bbox"] for d in mine], "scores": [d["score"] for d in mine],
                            "category_ids": [d["category_id"] for d in mine]})
        references.append(image["id"])
    return predictions, references


def test_detection_metric_module_equals_pycocotools_and_the_lvis_evaluator(tmp_path):
    pytest.importorskip("evaluate")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, detections = coco_ground_truth_and_detections()
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    predictions, references = per_image(detections, gt)
    coco = load_metric("glip_detection", "coco")
    for start in range(0, len(predictions), 5):
        coco.add_batch(predictions=predictions[start:start + 5], references=references[start:start + 5])
    metrics = coco.compute(ground_truth=str(path))
    with contextlib.redirect_stdout(io.StringIO()):
        reference_gt = COCO(str(path))
        evaluator = COCOeval(reference_gt, reference_gt.loadRes([dict(d) for d in detections]), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert [metrics[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")] == pytest.approx(
        evaluator.stats[:6].tolist(), abs=1e-12)
    for config, fixed in (("lvis", False), ("lvis-fixed", True)):
        import evaluate

        module = evaluate.load(metric_path("glip_detection"), config)
        assert module.compute(predictions=predictions, references=references, ground_truth=gt) == pytest.approx(
            lvis_evaluate(gt, detections, fixed_ap=fixed))


def test_flickr_metric_module_equals_the_recall(flickr):
    pytest.importorskip("evaluate")
    entries = hand_made_predictions()
    module = load_metric("flickr30k_recall", "merged")
    module.add_batch(predictions=[e["boxes"] for e in entries],
                     references=[{"image_id": e["image_id"], "sentence_id": e["sentence_id"]} for e in entries])
    expected = flickr_recall(load_flickr_split(flickr, "test", "merged"), entries)
    assert module.compute(flickr_root=str(flickr)) == pytest.approx(expected)
    assert np.isclose(expected["R@10"], 3 / 5)


def test_coco_scoring_fills_in_crowd_and_area_fields_a_file_may_lack():
    from glip_hf.evaluation.benchmarks import score_detections

    gt, detections = coco_ground_truth_and_detections(1)
    for annotation in gt["annotations"]:
        annotation["area"] = annotation["bbox"][2] * annotation["bbox"][3]
    bare = {**gt, "annotations": [{k: v for k, v in a.items() if k not in ("iscrowd", "area")}
                                  for a in gt["annotations"]]}
    assert score_detections("coco", bare, detections) == score_detections("coco", gt, detections)
