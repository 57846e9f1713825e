"""glip-hf: GLIP (Grounded Language-Image Pre-training) as a transformers-native model."""

from .configuration_glip import PRESETS, GlipConfig
from .modeling_glip import (
    GlipForGrounding,
    GlipGroundingOutput,
    GlipModel,
    GlipModelOutput,
    GlipPreTrainedModel,
)

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "GlipConfig",
    "GlipForGrounding",
    "GlipGroundingOutput",
    "GlipModel",
    "GlipModelOutput",
    "GlipPreTrainedModel",
]
