"""glip-hf: GLIP (Grounded Language-Image Pre-training) as a transformers-native model.

Importing the package registers GLIP with transformers' Auto classes and the zero-shot-object-detection pipeline.
"""

from .configuration_glip import PRESETS, GlipConfig
from .image_processing_glip import GlipImageProcessor, GlipImageProcessorFast
from .modeling_glip import (
    GlipForGrounding,
    GlipGroundingOutput,
    GlipModel,
    GlipModelOutput,
    GlipPreTrainedModel,
)
from .processing_glip import GlipProcessor
from .registration_glip import register_glip

__version__ = "0.1.0"

register_glip()

__all__ = [
    "PRESETS",
    "GlipConfig",
    "GlipForGrounding",
    "GlipGroundingOutput",
    "GlipImageProcessor",
    "GlipImageProcessorFast",
    "GlipModel",
    "GlipModelOutput",
    "GlipPreTrainedModel",
    "GlipProcessor",
    "register_glip",
]
