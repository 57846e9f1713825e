"""LVIS standard AP and Fixed AP against the LVIS API (`lvis` 0.5.3, run under a small compatibility patch) on
synthetic data exercising every rule: the 300-per-image cap, the 10,000-per-category cap of Fixed AP, rare /
common / frequent categories, federated negatives and not-exhaustive categories."""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest

from glip_hf.evaluation.lvis_eval import LVIS_METRIC_NAMES, LvisEvaluator, lvis_evaluate


def lvis_api():
    """The `lvis` 0.5.3 package, patched for numpy >= 1.24 (np.float) and without opencv (imported by its
    visualiser only). Missing, it skips the test (fails it under CI=true): `pip install --no-deps lvis==0.5.3`."""
    if not hasattr(np, "float"):
        np.float = float  # lvis/eval.py: astype(dtype=np.float)
    sys.modules.setdefault("cv2", types.ModuleType("cv2"))
    try:
        import lvis
    except ImportError as error:
        message = f"the LVIS API reference is not installed ({error}): pip install --no-deps lvis==0.5.3"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return lvis


def synthetic_lvis(seed=0, images=12, categories=9, crowded_image_detections=420, flooded_category_detections=0):
    """A ground truth and detections that touch every LVIS rule."""
    rng = np.random.default_rng(seed)
    frequencies = ["r", "c", "f"]
    cats = [{"id": index + 1, "name": f"class{index}", "frequency": frequencies[index % 3]}
            for index in range(categories)]
    gt_images, annotations, detections = [], [], []

    def box():
        x, y = rng.uniform(0, 300, 2)
        w, h = rng.uniform(4, 160, 2)
        return [float(x), float(y), float(w), float(h)]

    for image_id in range(1, images + 1):
        present = sorted(rng.choice(categories, size=rng.integers(1, 4), replace=False) + 1)
        absent = [c["id"] for c in cats if c["id"] not in present]
        negatives = sorted(rng.choice(absent, size=len(absent) // 2, replace=False).tolist())
        not_exhaustive = [int(c) for c in present if rng.random() < 0.3]
        gt_images.append({"id": image_id, "height": 480, "width": 480, "neg_category_ids": negatives,
                          "not_exhaustive_category_ids": not_exhaustive})
        for category in present:
            for _ in range(rng.integers(1, 4)):
                gt_box = box()
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(category),
                                    "bbox": gt_box, "area": gt_box[2] * gt_box[3] * float(rng.uniform(0.6, 1.0))})
                # a near hit, sometimes a second (duplicate) one
                for _ in range(rng.integers(1, 3)):
                    jitter = np.asarray(gt_box) + rng.normal(0, 6, 4) * [1, 1, 0.5, 0.5]
                    jitter[2:] = np.abs(jitter[2:]) + 1
                    detections.append({"image_id": image_id, "category_id": int(category),
                                       "bbox": jitter.tolist(), "score": float(rng.random())})
        # false positives on present, negative and unknown categories (the last must be dropped)
        for _ in range(rng.integers(5, 15)):
            detections.append({"image_id": image_id, "category_id": int(rng.integers(1, categories + 1)),
                               "bbox": box(), "score": float(rng.random())})
    # an image with more detections than the per-image cap
    for _ in range(crowded_image_detections):
        category = int(rng.choice([1, 2, 3, *gt_images[0]["neg_category_ids"]]))
        detections.append({"image_id": 1, "category_id": category, "bbox": box(), "score": float(rng.random())})
    # a category with more detections than Fixed AP's per-category budget
    flood_category = annotations[0]["category_id"]
    for _ in range(flooded_category_detections):
        image_id = int(rng.integers(1, images + 1))
        detections.append({"image_id": image_id, "category_id": flood_category, "bbox": box(),
                           "score": 0.01 + float(rng.random()) * 0.5})
    if flooded_category_detections:
        # exact hits ranked last: the budget cuts them, so it changes the recall reached
        detections += [{"image_id": a["image_id"], "category_id": flood_category, "bbox": list(a["bbox"]),
                        "score": 0.001} for a in annotations if a["category_id"] == flood_category]
    gt = {"images": gt_images, "annotations": annotations, "categories": cats}
    return gt, detections


def reference_standard(lvis, gt, detections):
    ground_truth = _reference_gt(lvis, gt)
    evaluator = lvis.LVISEval(ground_truth, lvis.LVISResults(ground_truth, [dict(d) for d in detections]), "bbox")
    evaluator.run()
    return {name: evaluator.results[name] for name in LVIS_METRIC_NAMES}


def reference_fixed(lvis, gt, detections, topk=10_000):
    """The Fixed AP protocol of GLIP's / MDETR's LvisEvaluatorFixedAP on top of the LVIS API."""
    by_category = {}
    for detection in detections:
        by_category.setdefault(detection["category_id"], []).append(dict(detection))
    kept = [d for anns in by_category.values() for d in sorted(anns, key=lambda a: a["score"], reverse=True)[:topk]]
    ground_truth = _reference_gt(lvis, gt)
    evaluator = lvis.LVISEval(ground_truth, lvis.LVISResults(ground_truth, kept, max_dets=-1), "bbox")
    evaluator.params.max_dets = -1
    evaluator.run()
    return {name: evaluator.results[name] for name in LVIS_METRIC_NAMES}


def _reference_gt(lvis, gt):
    import copy

    ground_truth = lvis.LVIS.__new__(lvis.LVIS)
    ground_truth.logger = __import__("logging").getLogger("lvis-reference")
    ground_truth.dataset = copy.deepcopy(gt)
    ground_truth._create_index()
    return ground_truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_standard_ap_equals_the_lvis_api(seed):
    lvis = lvis_api()
    gt, detections = synthetic_lvis(seed)
    expected = reference_standard(lvis, gt, detections)
    assert sum(d["image_id"] == 1 for d in detections) > 300  # the per-image cap binds
    actual = lvis_evaluate(gt, detections)
    for name in LVIS_METRIC_NAMES:
        assert actual[name] == pytest.approx(expected[name], abs=1e-12), name
    assert all(actual[f"AP{group}"] > -1 for group in "rcf")


def test_per_image_cap_and_federated_rules_change_the_result():
    gt, detections = synthetic_lvis(3)
    capped = lvis_evaluate(gt, detections)
    uncapped = LvisEvaluator(gt, max_detections=10**6).compute(detections)
    assert capped["AP"] != uncapped["AP"]
    # Detections of a category that is neither present nor a negative on an image are not scored at all.
    unknown = []
    for image in gt["images"]:
        present = {a["category_id"] for a in gt["annotations"] if a["image_id"] == image["id"]}
        for category in gt["categories"]:
            if category["id"] not in present and category["id"] not in image["neg_category_ids"]:
                unknown.append({"image_id": image["id"], "category_id": category["id"], "bbox": [0, 0, 50, 50],
                                "score": 0.999})
    with_unknown = LvisEvaluator(gt, max_detections=10**6).compute(detections + unknown)
    assert with_unknown == uncapped


def test_fixed_ap_equals_the_lvis_api_with_the_category_budget_binding():
    lvis = lvis_api()
    gt, detections = synthetic_lvis(4, images=8, crowded_image_detections=0, flooded_category_detections=10_300)
    flood = gt["annotations"][0]["category_id"]
    assert sum(d["category_id"] == flood for d in detections) > 10_000
    expected = reference_fixed(lvis, gt, detections)
    actual = lvis_evaluate(gt, detections, fixed_ap=True)
    for name in LVIS_METRIC_NAMES:
        assert actual[name] == pytest.approx(expected[name], abs=1e-12), name
    unbounded = LvisEvaluator(gt, fixed_ap=True, detections_per_category=10**6).compute(detections)
    assert unbounded["AP"] != actual["AP"]  # the budget changes the result


def test_not_exhaustive_categories_ignore_unmatched_detections():
    gt = {
        "images": [{"id": 1, "neg_category_ids": [], "not_exhaustive_category_ids": [1]},
                   {"id": 2, "neg_category_ids": [], "not_exhaustive_category_ids": []}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "area": 10000.0},
                        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 100, 100], "area": 10000.0}],
        "categories": [{"id": 1, "name": "a", "frequency": "f"}],
    }
    hits = [{"image_id": i, "category_id": 1, "bbox": [0, 0, 100, 100], "score": 0.5} for i in (1, 2)]
    false_positive = {"bbox": [200, 200, 50, 50], "category_id": 1, "score": 0.9}
    on_not_exhaustive = lvis_evaluate(gt, hits + [dict(false_positive, image_id=1)])
    on_exhaustive = lvis_evaluate(gt, hits + [dict(false_positive, image_id=2)])
    assert on_not_exhaustive["AP"] == pytest.approx(1.0)
    assert on_exhaustive["AP"] < 1.0
    lvis = lvis_api()
    for detections, actual in ((hits + [dict(false_positive, image_id=1)], on_not_exhaustive),
                               (hits + [dict(false_positive, image_id=2)], on_exhaustive)):
        assert actual["AP"] == pytest.approx(reference_standard(lvis, gt, detections)["AP"], abs=1e-12)
