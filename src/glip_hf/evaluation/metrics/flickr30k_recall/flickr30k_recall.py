"""Flickr30k Entities phrase-grounding recall: R@1, R@5, R@10 and the upper bound, ANY-box ("any") or MERGED-box
("merged") protocol, as MDETR and GLIP compute them."""

import datasets
import evaluate

from glip_hf.evaluation.flickr_eval import flickr_recall, load_flickr_split

_DESCRIPTION = """Recall@k of ranked boxes per phrase: a phrase is recalled when one of its first k boxes has IoU >= 0.5
with one of its ground-truth boxes ("any") or with the box enclosing them all ("merged")."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per sentence, one ranked list of [x1, y1, x2, y2] boxes per phrase with boxes.
    references: per sentence, {"image_id": str, "sentence_id": int} (the sentence's line in Sentences/<image>.txt).
    flickr_root: the Flickr30k Entities folder (Annotations/, Sentences/), given to `compute`. Every evaluated
        sentence of the images the references name needs a prediction.
Example:
    >>> metric = evaluate.load(glip_hf.evaluation.metric_path("flickr30k_recall"), "merged")
    >>> metric.add_batch(predictions=[[[[1, 2, 30, 40]]]], references=[{"image_id": "1000092795", "sentence_id": 0}])
    >>> metric.compute(flickr_root="flickr30k_entities")
"""

_CITATION = """@inproceedings{plummer2015flickr30k, title={Flickr30k Entities}, author={Plummer, Bryan A. and others},
booktitle={ICCV}, year={2015}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Flickr30kRecall(evaluate.Metric):
    BUILDER_CONFIG_NAMES = ("any", "merged")

    def _info(self):
        if self.config_name not in ("default", *self.BUILDER_CONFIG_NAMES):
            raise ValueError(f"flickr30k_recall configuration must be one of {self.BUILDER_CONFIG_NAMES}, "
                             f"got {self.config_name!r}")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float64")))),
                "references": {"image_id": datasets.Value("string"), "sentence_id": datasets.Value("int64")},
            }),
        )

    def _compute(self, predictions, references, flickr_root=None):
        if flickr_root is None:
            raise ValueError("flickr30k_recall needs the dataset folder: compute(flickr_root=PATH)")
        protocol = "any" if self.config_name == "default" else self.config_name
        image_ids = sorted({reference["image_id"] for reference in references})
        samples = load_flickr_split(flickr_root, protocol=protocol, image_ids=image_ids)
        entries = [{"image_id": reference["image_id"], "sentence_id": reference["sentence_id"], "boxes": boxes}
                   for boxes, reference in zip(predictions, references)]
        return flickr_recall(samples, entries, source="flickr30k_recall predictions")
