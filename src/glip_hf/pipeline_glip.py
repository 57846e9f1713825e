"""The `zero-shot-object-detection` pipeline for GLIP.

transformers' pipeline runs the model once per candidate label with that label alone as the text. GLIP grounds all
labels of one prompt jointly (its fusion layers see the whole prompt), so for GLIP models this subclass builds one
detection prompt from all candidate labels (chunked when long), runs the model once and post-processes with
`GlipProcessor`; it gives the same boxes as the processor path. Other models keep transformers' behaviour.
"""

from __future__ import annotations

from transformers import BatchFeature
from transformers.image_utils import load_image
from transformers.pipelines.zero_shot_object_detection import ZeroShotObjectDetectionPipeline


class GlipZeroShotObjectDetectionPipeline(ZeroShotObjectDetectionPipeline):
    def _is_glip(self) -> bool:
        return getattr(self.model.config, "model_type", None) == "glip"

    def _glip_processor(self):
        from .processing_glip import GlipProcessor

        if isinstance(getattr(self, "processor", None), GlipProcessor):
            return self.processor
        try:
            self.processor = GlipProcessor.from_pretrained(self.model.name_or_path)
        except (OSError, ValueError, TypeError):
            self.processor = GlipProcessor(self.image_processor, self.tokenizer)
        return self.processor

    def preprocess(self, inputs, timeout=None):
        if not self._is_glip():
            yield from super().preprocess(inputs, timeout=timeout)
            return
        image = load_image(inputs["image"], timeout=timeout)
        labels = inputs["candidate_labels"]
        if isinstance(labels, str):
            labels = [label.strip() for label in labels.split(",")]
        model_inputs = self._glip_processor()(images=image, text=list(labels))
        yield {"is_last": True, "glip_inputs": model_inputs}

    def _forward(self, model_inputs):
        if "glip_inputs" not in model_inputs:
            return super()._forward(model_inputs)
        inputs = model_inputs.pop("glip_inputs")
        # A copy moves to the device; `inputs` stays where post-processing reads it.
        outputs = self.model(**BatchFeature(dict(inputs)).to(self.device))
        return {"is_last": model_inputs["is_last"], "glip_inputs": inputs, "glip_outputs": outputs}

    def postprocess(self, model_outputs, threshold=0.1, top_k=None):
        if not model_outputs or "glip_outputs" not in model_outputs[0]:
            return super().postprocess(model_outputs, threshold=threshold, top_k=top_k)
        output = model_outputs[0]
        result = self._glip_processor().post_process_grounded_object_detection(
            output["glip_outputs"], output["glip_inputs"], threshold=threshold
        )[0]
        detections = [
            {"score": score, "label": label, "box": self._get_bounding_box(box)}
            for score, label, box in zip(result["scores"].tolist(), result["text_labels"], result["boxes"])
        ]
        detections.sort(key=lambda item: item["score"], reverse=True)
        return detections[:top_k] if top_k else detections


__all__ = ["GlipZeroShotObjectDetectionPipeline"]
