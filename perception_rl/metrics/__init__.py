"""The papers' evaluation metrics, each checked against its reference tool in tests/metrics/.

Importing this package is cheap: faster-coco-eval, scipy and nltk load on first use.
"""

from perception_rl.metrics.coco import COCO_METRIC_NAMES, coco_metrics
from perception_rl.metrics.counting import count_correct, counting_metrics
from perception_rl.metrics.crowd import crowd_metrics
from perception_rl.metrics.grounding import box_iou, centre_inside, grounding_metrics
from perception_rl.metrics.ocr import (
    meteor,
    meteor_unavailable_reason,
    normalized_edit_distance,
    ocr_metrics,
    page_metrics,
    sentence_bleu,
    token_set_scores,
    tokenize,
)
from perception_rl.metrics.records import RecordError

__all__ = [
    "COCO_METRIC_NAMES",
    "RecordError",
    "box_iou",
    "centre_inside",
    "coco_metrics",
    "count_correct",
    "counting_metrics",
    "crowd_metrics",
    "grounding_metrics",
    "meteor",
    "meteor_unavailable_reason",
    "normalized_edit_distance",
    "ocr_metrics",
    "page_metrics",
    "sentence_bleu",
    "token_set_scores",
    "tokenize",
]
