"""Box AP of detections against a COCO or LVIS ground truth: COCO AP (pycocotools), LVIS standard AP or LVIS
Fixed AP (glip_hf's LVIS evaluator, equal to the LVIS API's numbers)."""

import datasets
import evaluate

from glip_hf.evaluation.benchmarks import score_detections

_DESCRIPTION = """Box AP of per-image detections. Configurations: "coco" (AP AP50 AP75 APs APm APl), "lvis" (standard
LVIS AP, 300 detections per image, plus APr APc APf) and "lvis-fixed" (Fixed AP: the top 10,000 detections per
category over the dataset)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per image, a dict with `boxes` ([x, y, w, h] each), `scores` and `category_ids`.
    references: per image, its `image_id` in the ground truth.
    ground_truth: the annotation JSON file (or its parsed dict), given to `compute`.
Returns:
    the metrics as floats (-1 where no ground truth qualifies, as pycocotools and the LVIS API report).
Example:
    >>> metric = evaluate.load(glip_hf.evaluation.metric_path("glip_detection"), "lvis-fixed")
    >>> metric.add_batch(predictions=[{"boxes": [[10, 10, 50, 40]], "scores": [0.9], "category_ids": [3]}],
    ...                  references=[139])
    >>> metric.compute(ground_truth="lvis_v1_minival.json")
"""

_CITATION = """@inproceedings{li2022grounded, title={Grounded Language-Image Pre-training}, author={Li, Liunian Harold
and Zhang, Pengchuan and Zhang, Haotian and others}, booktitle={CVPR}, year={2022}}
@article{dave2021evaluating, title={Evaluating Large-Vocabulary Object Detectors: The Devil is in the Details},
author={Dave, Achal and Doll{\\'a}r, Piotr and Ramanan, Deva and Kirillov, Alexander and Girshick, Ross},
journal={arXiv:2102.01066}, year={2021}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GlipDetection(evaluate.Metric):
    BUILDER_CONFIG_NAMES = ("coco", "lvis", "lvis-fixed")

    def _info(self):
        if self.config_name not in ("default", *self.BUILDER_CONFIG_NAMES):
            raise ValueError(f"glip_detection configuration must be one of {self.BUILDER_CONFIG_NAMES}, "
                             f"got {self.config_name!r}")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": {
                    "boxes": datasets.Sequence(datasets.Sequence(datasets.Value("float64"), length=4)),
                    "scores": datasets.Sequence(datasets.Value("float64")),
                    "category_ids": datasets.Sequence(datasets.Value("int64")),
                },
                "references": datasets.Value("int64"),
            }),
        )

    def _compute(self, predictions, references, ground_truth=None):
        if ground_truth is None:
            raise ValueError("glip_detection needs the ground truth: compute(ground_truth=PATH_OR_DICT)")
        benchmark = "coco" if self.config_name == "default" else self.config_name
        results = [
            {"image_id": int(image_id), "category_id": int(category_id), "bbox": list(box), "score": float(score)}
            for prediction, image_id in zip(predictions, references)
            for box, score, category_id in zip(prediction["boxes"], prediction["scores"], prediction["category_ids"])
        ]
        return score_detections(benchmark, ground_truth, results, image_ids=[int(i) for i in references])
