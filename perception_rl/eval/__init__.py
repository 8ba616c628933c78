"""Evaluation: the papers' metrics (`perception_rl.eval.metrics`), re-exported here."""

from perception_rl.eval.metrics import (
    COCO_METRIC_NAMES,
    RecordError,
    coco_metrics,
    counting_metrics,
    crowd_metrics,
    grounding_metrics,
    ocr_metrics,
)

__all__ = [
    "COCO_METRIC_NAMES",
    "RecordError",
    "coco_metrics",
    "counting_metrics",
    "crowd_metrics",
    "grounding_metrics",
    "ocr_metrics",
]
