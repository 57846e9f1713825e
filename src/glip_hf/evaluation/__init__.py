"""Benchmark evaluation: COCO, LVIS (standard and Fixed AP), ODinW and Flickr30k Entities.

The metrics are also `evaluate` modules shipped in this folder: `evaluate.load(metric_path("glip_detection"),
"lvis")` works offline.
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).with_name("metrics")
METRIC_NAMES = ("glip_detection", "flickr30k_recall")


def metric_path(name: str) -> str:
    """Folder of one of the shipped `evaluate` modules, for `evaluate.load(path, config_name)`."""
    if name not in METRIC_NAMES:
        raise ValueError(f"metric must be one of {METRIC_NAMES}, got {name!r}")
    return str(METRICS_DIR / name)


def load_metric(name: str, config_name: str | None = None, **kwargs):
    """`evaluate.load` of a shipped module (no network access)."""
    import evaluate

    return evaluate.load(metric_path(name), config_name, **kwargs)


__all__ = ["METRIC_NAMES", "load_metric", "metric_path"]
