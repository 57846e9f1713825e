"""Registration of GLIP with transformers: Auto classes, remote-code auto_map, and the pipeline."""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForZeroShotObjectDetection,
    AutoProcessor,
)
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import logging

from .configuration_glip import GlipConfig
from .image_processing_glip import GlipImageProcessor, GlipImageProcessorFast
from .modeling_glip import GlipForGrounding, GlipModel
from .pipeline_glip import GlipZeroShotObjectDetectionPipeline
from .processing_glip import GlipProcessor

PIPELINE_TASK = "zero-shot-object-detection"


def register_glip() -> None:
    """Idempotent. After it, Auto classes resolve model_type "glip", and saved folders carry an auto_map so that
    `trust_remote_code=True` loads them where glip_hf is not installed."""
    AutoConfig.register(GlipConfig.model_type, GlipConfig, exist_ok=True)
    AutoModel.register(GlipConfig, GlipModel, exist_ok=True)
    AutoModelForZeroShotObjectDetection.register(GlipConfig, GlipForGrounding, exist_ok=True)
    AutoImageProcessor.register(
        GlipConfig, image_processor_classes={"pil": GlipImageProcessor, "torchvision": GlipImageProcessorFast},
        exist_ok=True,
    )
    AutoProcessor.register(GlipConfig, GlipProcessor, exist_ok=True)

    GlipConfig.register_for_auto_class()
    GlipModel.register_for_auto_class("AutoModel")
    GlipForGrounding.register_for_auto_class("AutoModelForZeroShotObjectDetection")
    GlipImageProcessor.register_for_auto_class("AutoImageProcessor")
    GlipImageProcessorFast.register_for_auto_class("AutoImageProcessor")
    GlipProcessor.register_for_auto_class("AutoProcessor")

    if PIPELINE_REGISTRY.supported_tasks.get(PIPELINE_TASK, {}).get("impl") is not GlipZeroShotObjectDetectionPipeline:
        # The subclass keeps transformers' behaviour for other models; silence the "overwriting" notice.
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()
        try:
            PIPELINE_REGISTRY.register_pipeline(
                PIPELINE_TASK, pipeline_class=GlipZeroShotObjectDetectionPipeline,
                pt_model=AutoModelForZeroShotObjectDetection, type="multimodal",
            )
        finally:
            logging.set_verbosity(verbosity)
